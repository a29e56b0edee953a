"""Baton's MCP gateway: agents reach their upstream MCP servers' tools through Baton.

An admin registers upstream servers for a remote agent (`services`, the page in
`views`); Baton serves MCP over Streamable HTTP at /mcp/ (`asgi`), authenticated by the
agent's API key; `tools/list` is the upstream tools the agent's live policy can ever
admit (`catalog`), and every `tools/call` passes the one gateway (`server`, through
agents.remote) before it is forwarded (`upstream`).
"""

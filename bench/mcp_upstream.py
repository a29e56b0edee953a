"""The benchmark's upstream MCP server, on the official SDK: one tool that answers at once
(no work, no I/O), so a call measures the protocol and the gateway around it.

    python -m bench.mcp_upstream http PORT   (Streamable HTTP at http://127.0.0.1:PORT/mcp)
    python -m bench.mcp_upstream stdio
"""

from __future__ import annotations

import sys

from mcp.server.mcpserver import MCPServer

upstream = MCPServer("bench", log_level="WARNING")


@upstream.tool(name="bench.echo", description="Answer the number it is given.")
def echo(i: int) -> str:
    return f"echo {i}"


if __name__ == "__main__":
    if sys.argv[1] == "http":
        upstream.run("streamable-http", port=int(sys.argv[2]))
    else:
        upstream.run()

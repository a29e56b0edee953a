"""The gateway: every tool step of every agent passes here (DESIGN section 4).

`core.decide_step` decides a step (kill switches, journal replay, schema, policy, rate
limit) and returns its outcome as a value; `hosted.Context` is what a program in Baton's
workers calls, and agents.remote answers agents that execute their own tools.
"""

from agents.gateway.core import args_hash
from agents.gateway.hosted import Context, LeaseHeartbeat

__all__ = ["Context", "LeaseHeartbeat", "args_hash"]

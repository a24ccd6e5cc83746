"""The smkd agent: RFC 1949 secure CBT joining and key distribution.

The protocol core (wire codec, crypto, tokens, ACLs and the host, router
and core state machines) is sans-IO. The agent module wraps it in asyncio
sockets, timers, a control socket and an event trace.
"""

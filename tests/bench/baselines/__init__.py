"""The two systems `make bench` compares ours with.

`bare` is the ceiling: one uvicorn process that generates answers in-process and
writes them straight to the socket (no Redis, no nginx, no second process), so any
gap between it and ours is what distribution costs. The socket.io peer is what a
Python team would typically build instead: python-socketio servers behind nginx
(`ip_hash`), a Redis manager fanning every emit out to all servers, and worker
processes taking jobs from a Redis list. `launch` starts either one and stops every
process it started.
"""

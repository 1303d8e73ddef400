"""Peers the server is measured against, as small as they can be while doing the same
work: relay N messages of a given size to every subscriber. Each runs as a process:
``python -m load.peers.ws_broadcast --port P`` / ``python -m load.peers.socketio_relay``.

Wire (both): a subscriber connects and waits; one publisher sends ``pub N SIZE``; every
other connection then receives N payloads of SIZE bytes and a final ``end``.
"""

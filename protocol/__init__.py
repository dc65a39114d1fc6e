"""The wire protocol between `tricode lsp` (or the CLI) and the daemon: typed messages
(protocol/messages.py), frames (protocol/framing.py), where the daemon listens (protocol/paths.py)
and the client (protocol/client.py, imported as `protocol.client`). Imports no torch: `lsp/`,
`training/` and `bench/` import it without importing the daemon.

`import protocol` gives the messages, the framing and the paths under one name.
"""
from protocol.messages import *  # noqa: F401,F403
from protocol.framing import HEADER, pack, read_frame, recv_frame, unpack_body  # noqa: F401
from protocol.paths import runtime_dir, socket_path  # noqa: F401

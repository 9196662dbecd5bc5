"""The MLLP listener: HL7 v2 in, stored, acknowledged.

Layers: `framing` (the byte codec), `server` (anyio TCP/TLS server and connection loop), `inbox`
(the one-method seam the loop calls: `MessageHandler` stores the envelope, then builds the ACK).
Group commit is the store's business (both stores batch concurrent `append` calls).
"""

from listeners.mllp.framing import Frame, FrameDecoder, encode_frame
from listeners.mllp.inbox import Accepts, Inbox, MessageHandler, Reply, accept_all
from listeners.mllp.server import TLSSettings, serve_mllp

__all__ = [
    "Accepts",
    "Frame",
    "FrameDecoder",
    "Inbox",
    "MessageHandler",
    "Reply",
    "TLSSettings",
    "accept_all",
    "encode_frame",
    "serve_mllp",
]

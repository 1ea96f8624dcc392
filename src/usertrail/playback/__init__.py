"""Session Playback: who is recorded, chunk intake, encrypted blob storage, quota, retention, reads.

The browser records with rrweb (web/static/vendor/rrweb) and sends sequence-numbered chunks of
rrweb events; the server keeps them compressed and encrypted under a per-recording data key.
The recorder, this package and the replay page meet only at the chunk format in docs/playback.md.
"""

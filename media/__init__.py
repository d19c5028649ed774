"""Anchored media: SDP rewriting, port allocation and the RTP/RTCP relay."""

"""The exchange: buyers, bid profiles, caps, the sealed-bid auction and the CDR store."""

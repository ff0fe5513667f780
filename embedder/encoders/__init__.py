"""Encoders: CLIP (frames and query text) and the transformers text encoder (captions, transcripts)."""

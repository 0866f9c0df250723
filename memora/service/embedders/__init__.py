"""The text embedders of the service layer, one module each; `memora.service.embedding` is the
public face (the `Embedder` protocol, the built-in `HashingEmbedder` and `embedder_from_spec`)."""

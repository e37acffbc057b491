"""The trunk of each modality (torch modules; imported only by what builds a model)."""

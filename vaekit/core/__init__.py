"""The modality-independent VAE core."""

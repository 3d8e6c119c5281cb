"""The embedded Fashion-MNIST diffusion model (``builtin:fmnist``), its FD-FMNIST classifier, data reader and
training (see builtin/README.md).  Submodules are imported on demand to keep ``import adasde`` light."""

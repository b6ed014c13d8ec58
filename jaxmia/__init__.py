"""jaxmia: was this diffusion model trained on my images? Membership and dataset inference in JAX."""

__version__ = "0.1.0"

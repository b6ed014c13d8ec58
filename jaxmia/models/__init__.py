"""Networks, weights and the :class:`Denoiser` interface."""

from jaxmia.models.denoiser import COND_KINDS, Denoiser, analytic_denoiser  # noqa: F401

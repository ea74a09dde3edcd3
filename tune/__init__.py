"""Ray Tune sweeps over guidance-conditioning ranges and time samplers."""

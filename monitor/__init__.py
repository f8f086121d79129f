"""TLS monitor: makes the broker or app serve the material on the volume."""

"""The lab: data, small text-to-image models trained from scratch, and the theory experiments."""

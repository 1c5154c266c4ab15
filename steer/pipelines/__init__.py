"""Steered pipelines: `SteeringMixin` (`steer.pipelines.mixin`) on top of each supported diffusers pipeline."""

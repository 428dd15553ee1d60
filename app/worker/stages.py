"""The stages of one pose in the pipeline, in order: where its time goes and where a fault strikes."""

from __future__ import annotations

from enum import StrEnum


class PipelineStage(StrEnum):
    CONTROLNET = "controlnet"  # render the ControlNet skeleton of the pose
    PROVIDER = "provider"  # the image provider's call
    UPLOAD = "upload"  # store the image

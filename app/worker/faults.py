"""Injected faults for demos and alert drills (``POSEGEN_FAULTS``).

Which pose fails is decided by a hash of (generation, pose slot, attempt), so a
given fraction of poses fails, and the same pose fails the same way in a rerun.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

from app.errors import ErrorType, PoseGenerationError
from app.worker.stages import PipelineStage

# The pipeline stage at which each injected fault strikes; every other error type strikes the provider call.
STAGE_OF = {
    ErrorType.CONTROLNET_ERROR: PipelineStage.CONTROLNET,
    ErrorType.STORAGE_ERROR: PipelineStage.UPLOAD,
}


class FaultPlan:
    def __init__(self, fractions: Mapping[ErrorType, float]) -> None:
        self._fractions = [(t, f) for t, f in fractions.items() if f > 0]

    def pick(self, generation_id: str, position: int, attempt: int) -> ErrorType | None:
        if not self._fractions:
            return None
        digest = hashlib.sha256(f"{generation_id}:{position}:{attempt}".encode()).digest()
        draw = int.from_bytes(digest[:8], "big") / 2**64
        edge = 0.0
        for error_type, fraction in self._fractions:
            edge += fraction
            if draw < edge:
                return error_type
        return None


def raise_if_due(fault: ErrorType | None, stage: PipelineStage) -> None:
    if fault is not None and STAGE_OF.get(fault, PipelineStage.PROVIDER) == stage:
        raise PoseGenerationError(f"injected fault {fault.value} (POSEGEN_FAULTS)", error_type=fault)

"""Pose library endpoints."""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, get
from litestar.exceptions import NotFoundException
from litestar.params import FromPath, Parameter

from app.api.deps import Caller, DatabaseConnection
from app.api.openapi import error_responses
from app.api.schemas import Pose, PosePage
from app.domain.poses import get_pose, list_poses


class PoseController(Controller):
    path = "/poses"
    tags = ["poses"]

    @get("/", summary="The pose library, optionally one category", responses=error_responses(401, 422))
    async def list_library(
        self, db: DatabaseConnection, principal: Caller,
        category: Annotated[str | None, Parameter(max_length=100)] = None,
        limit: Annotated[int, Parameter(ge=1, le=100)] = 50,
        offset: Annotated[int, Parameter(ge=0, le=1_000_000)] = 0,
    ) -> PosePage:
        rows, total = await list_poses(db, category=category, limit=limit, offset=offset)
        return PosePage(poses=[Pose(**row) for row in rows], total=total)

    @get("/{pose_id:str}", summary="One pose with its keypoints", responses=error_responses(401, 404))
    async def read(self, pose_id: FromPath[str], db: DatabaseConnection, principal: Caller) -> Pose:
        row = await get_pose(db, pose_id)
        if row is None:
            raise NotFoundException(f"pose {pose_id} not found")
        return Pose(**row)

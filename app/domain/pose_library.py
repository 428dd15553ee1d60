"""The built-in pose library: named poses in categories, each with 18 OpenPose body keypoints.

A pose is described by a few joint angles; :func:`keypoints_for` turns them into
OpenPose COCO-18 keypoints (``[x, y]`` in 0..1 image coordinates, y down).
Angles are in degrees from straight down (0), positive towards the figure's
own left (the viewer's right).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# OpenPose COCO-18 order.
KEYPOINT_NAMES = (
    "nose", "neck", "right_shoulder", "right_elbow", "right_wrist", "left_shoulder", "left_elbow",
    "left_wrist", "right_hip", "right_knee", "right_ankle", "left_hip", "left_knee", "left_ankle",
    "right_eye", "left_eye", "right_ear", "left_ear",
)
# Limbs drawn in the conditioning image, as pairs of keypoint indexes.
LIMBS = (
    (1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10),
    (1, 11), (11, 12), (12, 13), (1, 0), (0, 14), (14, 16), (0, 15), (15, 17),
)


@dataclass(frozen=True)
class PoseShape:
    """Joint angles of one pose: (upper, lower) segment angles per limb, plus lean and crouch."""

    right_arm: tuple[float, float] = (-15, -10)
    left_arm: tuple[float, float] = (15, 10)
    right_leg: tuple[float, float] = (-5, 0)
    left_leg: tuple[float, float] = (5, 0)
    lean: float = 0.0
    crouch: float = 0.0
    head_turn: float = 0.0


@dataclass(frozen=True)
class LibraryPose:
    pose_id: str
    name: str
    category: str
    shape: PoseShape

    @property
    def keypoints(self) -> list[list[float]]:
        return keypoints_for(self.shape)


def _step(origin: tuple[float, float], angle: float, length: float) -> tuple[float, float]:
    rad = math.radians(angle)
    return origin[0] + math.sin(rad) * length, origin[1] + math.cos(rad) * length


def keypoints_for(shape: PoseShape) -> list[list[float]]:
    """OpenPose COCO-18 keypoints for ``shape``, rounded to 4 decimals, all inside the frame."""
    hip_y = 0.55 + shape.crouch * 0.15
    hip_center = (0.5, hip_y)
    neck = _step(hip_center, 180 + shape.lean, 0.30)
    nose = _step(neck, 180 + shape.lean + shape.head_turn, 0.10)
    r_shoulder = (neck[0] - 0.09, neck[1] + 0.01)
    l_shoulder = (neck[0] + 0.09, neck[1] + 0.01)
    r_elbow = _step(r_shoulder, shape.right_arm[0], 0.14)
    r_wrist = _step(r_elbow, shape.right_arm[1], 0.13)
    l_elbow = _step(l_shoulder, shape.left_arm[0], 0.14)
    l_wrist = _step(l_elbow, shape.left_arm[1], 0.13)
    r_hip = (hip_center[0] - 0.06, hip_y)
    l_hip = (hip_center[0] + 0.06, hip_y)
    leg = 0.20 - shape.crouch * 0.05
    r_knee = _step(r_hip, shape.right_leg[0], leg)
    r_ankle = _step(r_knee, shape.right_leg[1], leg)
    l_knee = _step(l_hip, shape.left_leg[0], leg)
    l_ankle = _step(l_knee, shape.left_leg[1], leg)
    r_eye = (nose[0] - 0.025, nose[1] - 0.02)
    l_eye = (nose[0] + 0.025, nose[1] - 0.02)
    r_ear = (nose[0] - 0.05, nose[1] - 0.01)
    l_ear = (nose[0] + 0.05, nose[1] - 0.01)
    points = (nose, neck, r_shoulder, r_elbow, r_wrist, l_shoulder, l_elbow, l_wrist, r_hip, r_knee,
              r_ankle, l_hip, l_knee, l_ankle, r_eye, l_eye, r_ear, l_ear)
    return [[round(min(max(x, 0.02), 0.98), 4), round(min(max(y, 0.02), 0.98), 4)] for x, y in points]


def _pose(category: str, name: str, **angles: object) -> LibraryPose:
    slug = "".join(c if c.isalnum() else "_" for c in name.lower()).strip("_")
    while "__" in slug:
        slug = slug.replace("__", "_")
    return LibraryPose(f"pose_{slug}", name, category, PoseShape(**angles))  # type: ignore[arg-type]


BUSINESS = "Business Portraits"
CASUAL = "Casual Standing"
SITTING = "Seated"
ACTION = "Action & Sports"
DANCE = "Dance"
FASHION = "Fashion Editorial"
FITNESS = "Yoga & Fitness"

LIBRARY: tuple[LibraryPose, ...] = (
    _pose(BUSINESS, "Standing Confident", right_arm=(-20, 30), left_arm=(20, -30)),
    _pose(BUSINESS, "Arms Crossed", right_arm=(-10, 80), left_arm=(10, -80)),
    _pose(BUSINESS, "Hands in Pockets", right_arm=(-12, 15), left_arm=(12, -15)),
    _pose(BUSINESS, "Presenting Forward", right_arm=(-60, -90), left_arm=(10, 5)),
    _pose(BUSINESS, "Thoughtful Chin Touch", right_arm=(-10, 160), left_arm=(10, -70)),
    _pose(BUSINESS, "Leaning Professional", lean=6, right_arm=(-15, -5), left_arm=(25, -40)),
    _pose(CASUAL, "Relaxed Stance", left_leg=(10, 5)),
    _pose(CASUAL, "Hand on Hip", left_arm=(40, -60)),
    _pose(CASUAL, "Waving Hello", right_arm=(-100, -170)),
    _pose(CASUAL, "Looking Over Shoulder", head_turn=25, right_arm=(-8, -4)),
    _pose(CASUAL, "Both Hands on Hips", right_arm=(-40, 60), left_arm=(40, -60)),
    _pose(CASUAL, "Weight on One Leg", lean=-5, right_leg=(-2, 0), left_leg=(15, -5)),
    _pose(SITTING, "Seated Upright", crouch=1.0, right_leg=(-80, 0), left_leg=(80, 0)),
    _pose(SITTING, "Cross-Legged Floor", crouch=1.6, right_leg=(-100, 60), left_leg=(100, -60)),
    _pose(SITTING, "Seated Leaning Forward", crouch=1.0, lean=-15, right_leg=(-70, 5), left_leg=(70, -5)),
    _pose(SITTING, "Perched on Stool", crouch=0.8, right_leg=(-50, 0), left_leg=(60, 10)),
    _pose(SITTING, "Seated Chin on Hand", crouch=1.0, right_arm=(-30, 170), right_leg=(-80, 0),
          left_leg=(80, 0)),
    _pose(SITTING, "Relaxed Lounge", crouch=1.2, lean=12, right_leg=(-85, -20), left_leg=(80, 10)),
    _pose(ACTION, "Running Stride", lean=-10, right_arm=(40, 100), left_arm=(-40, -20),
          right_leg=(-35, 20), left_leg=(30, 60)),
    _pose(ACTION, "Jump Celebration", right_arm=(-150, -170), left_arm=(150, 170), right_leg=(-20, 30),
          left_leg=(20, -30)),
    _pose(ACTION, "Tennis Serve", right_arm=(-170, -175), left_arm=(120, 140), lean=8),
    _pose(ACTION, "Boxing Guard", crouch=0.3, right_arm=(-40, 150), left_arm=(30, -150)),
    _pose(ACTION, "Soccer Kick", right_leg=(-60, -40), left_arm=(70, 60), right_arm=(-60, -70)),
    _pose(ACTION, "Basketball Shot", right_arm=(-160, -170), left_arm=(150, -160), crouch=0.2),
    _pose(DANCE, "Ballet Arabesque", lean=-20, right_arm=(-90, -95), left_arm=(100, 110),
          right_leg=(-100, -95)),
    _pose(DANCE, "Hip Hop Freeze", crouch=0.6, right_arm=(-90, -30), left_arm=(60, 10), lean=10),
    _pose(DANCE, "Salsa Turn", right_arm=(-170, -160), left_arm=(60, 80), left_leg=(20, -10)),
    _pose(DANCE, "Jazz Hands", right_arm=(-60, -120), left_arm=(60, 120)),
    _pose(DANCE, "Disco Point", right_arm=(-150, -160), left_arm=(30, -40), lean=-5),
    _pose(DANCE, "Contemporary Reach", lean=15, right_arm=(-120, -100), left_arm=(130, 140),
          left_leg=(40, 30)),
    _pose(FASHION, "Runway Walk", right_arm=(5, 0), left_arm=(-5, 0), right_leg=(8, 0), left_leg=(-6, 0)),
    _pose(FASHION, "Over the Shoulder Glance", head_turn=-30, lean=-4, left_arm=(30, -70)),
    _pose(FASHION, "Hands in Hair", right_arm=(-140, 140), left_arm=(140, -140)),
    _pose(FASHION, "Cross-Leg Stand", right_leg=(5, 10), left_leg=(-8, -5), right_arm=(-25, 60)),
    _pose(FASHION, "Power Stance", right_leg=(-20, -5), left_leg=(20, 5), right_arm=(-40, 60),
          left_arm=(40, -60)),
    _pose(FASHION, "Jacket Over Shoulder", right_arm=(-150, 160), left_arm=(12, 8), lean=3),
    _pose(FITNESS, "Warrior II", crouch=0.4, right_arm=(-90, -90), left_arm=(90, 90), right_leg=(-45, 0),
          left_leg=(60, 20)),
    _pose(FITNESS, "Tree Pose", right_arm=(-170, 170), left_arm=(170, -170), left_leg=(70, -80)),
    _pose(FITNESS, "Deep Squat", crouch=1.4, right_arm=(-80, -80), left_arm=(80, 80), right_leg=(-70, 20),
          left_leg=(70, -20)),
    _pose(FITNESS, "Forward Lunge", crouch=0.5, right_leg=(-50, 0), left_leg=(50, 80)),
    _pose(FITNESS, "Overhead Stretch", right_arm=(-165, -175), left_arm=(165, 175)),
    _pose(FITNESS, "Side Bend", lean=20, right_arm=(-160, -150), left_arm=(20, 10)),
    _pose(FITNESS, "Star Jump", right_arm=(-130, -140), left_arm=(130, 140), right_leg=(-25, -25),
          left_leg=(25, 25)),
)

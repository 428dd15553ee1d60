"""The pose library over HTTP."""

from __future__ import annotations

from tests.stack import Stack


def test_library_has_forty_poses_in_six_categories(stack: Stack) -> None:
    answer = stack.http.get("/poses", params={"limit": 100}, headers=stack.headers(stack.new_user()))
    assert answer.status_code == 200
    body = answer.json()
    assert body["total"] >= 40 and len(body["poses"]) == body["total"]
    categories = {p["category"] for p in body["poses"]}
    assert len(categories) >= 6 and "Business Portraits" in categories
    for pose in body["poses"]:
        assert set(pose) == {"poseId", "name", "category", "keypoints"}
        assert len(pose["keypoints"]) == 18
        assert all(0 <= v <= 1 for point in pose["keypoints"] for v in point)


def test_filter_by_category_and_paginate(stack: Stack) -> None:
    headers = stack.headers(stack.new_user())
    business = stack.http.get("/poses", params={"category": "Business Portraits"}, headers=headers).json()
    assert business["total"] == len(business["poses"]) >= 5
    assert {p["category"] for p in business["poses"]} == {"Business Portraits"}
    first = stack.http.get("/poses", params={"limit": 5, "offset": 0}, headers=headers).json()
    second = stack.http.get("/poses", params={"limit": 5, "offset": 5}, headers=headers).json()
    assert not {p["poseId"] for p in first["poses"]} & {p["poseId"] for p in second["poses"]}
    empty = stack.http.get("/poses", params={"category": "No Such Category"}, headers=headers).json()
    assert empty == {"poses": [], "total": 0}


def test_one_pose_and_missing_pose(stack: Stack) -> None:
    headers = stack.headers(stack.new_user())
    pose = stack.http.get("/poses/pose_standing_confident", headers=headers).json()
    assert pose["name"] == "Standing Confident" and pose["category"] == "Business Portraits"
    assert stack.http.get("/poses/pose_nope", headers=headers).status_code == 404


def test_bad_query_is_422_naming_the_parameter(stack: Stack) -> None:
    headers = stack.headers(stack.new_user())
    for params, name in (({"limit": 0}, "limit"), ({"limit": 1000}, "limit"), ({"limit": "ten"}, "limit"),
                         ({"offset": -1}, "offset")):
        answer = stack.http.get("/poses", params=params, headers=headers)
        assert answer.status_code == 422, answer.text
        assert name in answer.json()["detail"]

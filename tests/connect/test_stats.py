"""Statistics from the mirror: counts, leads per pipeline, the funnel and its SVG."""

from __future__ import annotations

from datetime import UTC, datetime

from crm_app.extensions import db
from crm_app.models import Contact, Lead, Pipeline, PipelineStatus, SyncCursor, Task
from crm_app.services import stats
from tests.connect.conftest import HX


def _seed(owner_id: int) -> None:
    db.session.add_all(
        [
            Pipeline(owner_id=owner_id, id=1, name="Main", is_main=True, sort=1),
            Pipeline(owner_id=owner_id, id=2, name="Second", sort=2),
            PipelineStatus(
                owner_id=owner_id, pipeline_id=1, id=11, name="New", sort=10, color="#99ccff"
            ),
            PipelineStatus(
                owner_id=owner_id, pipeline_id=1, id=12, name="Talks", sort=20, color='"><script>'
            ),
            PipelineStatus(
                owner_id=owner_id, pipeline_id=1, id=142, name="Won", sort=30, color="#CCFF66"
            ),
            *[Lead(owner_id=owner_id, id=100 + i, pipeline_id=1, status_id=11) for i in range(3)],
            Lead(owner_id=owner_id, id=200, pipeline_id=1, status_id=12),
            Lead(owner_id=owner_id, id=201, pipeline_id=1, status_id=999),  # status not mirrored
            Lead(owner_id=owner_id, id=300, pipeline_id=2, status_id=21),
            *[Contact(owner_id=owner_id, id=500 + i) for i in range(4)],
            Task(owner_id=owner_id, id=900),
            SyncCursor(
                owner_id=owner_id, entity="leads", last_success_at=datetime(2026, 1, 2, tzinfo=UTC)
            ),
        ]
    )
    db.session.commit()


def test_counts_pipelines_and_funnel(app, make_user) -> None:
    owner_id = make_user("ivan", role="user", owner="acme").owner_id
    other = make_user("eve", role="user", owner="other").owner_id
    _seed(owner_id)
    _seed(other)  # another owner's rows never count
    got = stats.get_stats(owner_id)
    assert (got["contacts_count"], got["leads_count"], got["tasks_count"]) == (4, 6, 1)
    assert got["last_sync_at"].startswith("2026-01-02")
    assert [(p["name"], p["count"]) for p in got["pipelines"]] == [("Main", 5), ("Second", 1)]
    stages = stats.funnel(owner_id, 1)
    assert [(s.name, s.count) for s in stages] == [
        ("New", 3),
        ("Talks", 1),
        ("Won", 0),
        ("#999", 1),
    ]
    assert stages[1].color == stats.DEFAULT_COLOR  # a malformed colour never reaches the SVG
    name, color, count = stages[2]
    assert (name, color, count) == ("Won", "#CCFF66", 0)
    assert stats.default_pipeline_id(owner_id) == 1
    assert stats.default_pipeline_id(owner_id, 2) == 2
    assert stats.default_pipeline_id(owner_id, 77) == 1


def test_stats_panel_draws_the_funnel(app, client, make_user, login) -> None:
    owner_id = make_user("ivan", role="user", owner="acme").owner_id
    _seed(owner_id)
    login("ivan")
    html = client.get("/admin/crm/ui/stats", headers=HX).get_data(as_text=True)
    assert 'id="stat-leads">6<' in html
    assert html.count('class="funnel-bar"') == 4 and "<svg" in html
    assert "<script>" not in html
    second = client.get("/admin/crm/ui/stats?pipeline_id=2", headers=HX).get_data(as_text=True)
    assert ">#21<" in second and second.count('class="funnel-bar"') == 1

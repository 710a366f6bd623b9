from workflow.models import Campaign
from sqlalchemy.orm import Session
from workflow.store import Expect, Result
from workflow.states import Status, Stage


def test_start_advance_and_duplicate(store):
    with Session(store.engine) as s:
        c = Campaign(owner_name="A", email="a@example.com", street="1 Main St", city="X", state="OH", zip_code="44087")
        s.add(c)
        s.commit()
        cid = c.id
    started = store.start_due(limit=10)
    assert [c.id for c in started] == [cid]
    out = store.apply(cid, "advance", expect=Expect(status=Status.PROCESSING, stage=Stage.PROPERTY_DATA))
    assert out.result is Result.APPLIED
    dup = store.apply(cid, "advance", expect=Expect(status=Status.PROCESSING, stage=Stage.PROPERTY_DATA))
    assert dup.result is Result.CONFLICT
    assert [h["version"] for h in store.history(cid)] == [1, 2]

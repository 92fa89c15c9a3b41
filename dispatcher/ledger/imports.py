"""One row per list loaded into a campaign: what came in and what was refused."""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import select

from dispatcher.core import clock

from .connection import BaseLedger
from .schema import (
    imports,
)

log = logging.getLogger(__name__)


class ImportLedger(BaseLedger):
    def record_import(
        self,
        campaign_id: str,
        source: str,
        *,
        rows: int,
        accepted: int,
        new: int,
        rejected: int,
        rejects_path: str | None,
        reasons: dict[str, int],
    ) -> None:
        with self.write() as conn:
            conn.execute(
                imports.insert().values(
                    campaign_id=campaign_id,
                    source=source,
                    at=clock.now(),
                    rows=rows,
                    accepted=accepted,
                    new=new,
                    rejected=rejected,
                    rejects_path=rejects_path,
                    reasons=reasons,
                )
            )

    def imports(self, campaign_id: str) -> list[dict[str, Any]]:
        with self.read() as conn:
            rows = conn.execute(select(imports).where(imports.c.campaign_id == campaign_id).order_by(imports.c.id))
            return [dict(r._mapping) for r in rows]

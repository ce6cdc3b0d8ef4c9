"""Drift monitoring: baselines, live capture windows, drift checks, alert rules and delivery.

A `baseline` is a sample and profile of a training export; `capture` sends a share of what the
API serves and the stream writes to the capture topic and reads it back in windows. `drift`
(with `columns`, `stattests` and `multivariate`) checks a window against its baseline the way
Evidently does, `report` draws Evidently's report, and `runs` records each check. `rules` and
`alerts` turn runs into alerts with a lifecycle, `outbox` and `notifiers` deliver them;
`worker` schedules the monitors of `config` (the monitors file), `api` serves them, `store`
holds their SQL tables.
"""

"""Fault injection: real Redis, API and worker processes, a recorded history, a checker.

`harness` starts and stops the processes, `load` drives HTTP load and records each request's
outcome, `checker` decides whether the history and the store keep Spillway's promise, and
`report` prints the table. Scenarios run at CI size in `make test` and full size in `make chaos`.
"""

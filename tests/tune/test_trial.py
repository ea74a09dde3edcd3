"""A trial's Train controller drops only Ray's teardown record of a trial that Tune ended (tune/trial.py)."""

import logging
import sys

from ray.core.generated.common_pb2 import ActorDiedErrorContext
from ray.exceptions import ActorDiedError

from tune.trial import QuietTeardown, owner_died_filter


def _record(error_message: str | None) -> logging.LogRecord:
    exc_info = None
    if error_message is not None:
        try:
            raise ActorDiedError(ActorDiedErrorContext(class_name="RayTrainWorker", actor_id=bytes(16),
                                                       error_message=error_message))
        except ActorDiedError:
            exc_info = sys.exc_info()
    return logging.LogRecord(QuietTeardown.LOGGER, logging.WARNING, __file__, 1,
                             "Graceful shutdown of backend failed.", None, exc_info)


def test_only_workers_dead_with_their_owner_are_dropped():
    assert not owner_died_filter(_record("The actor is dead because its owner has died. Owner Id: 8d93"))
    assert owner_died_filter(_record("The actor is dead because its worker process has died."))
    assert owner_died_filter(_record(None))


def test_the_controller_callback_filters_the_backend_logger(caplog):
    logger = logging.getLogger(QuietTeardown.LOGGER)
    before = list(logger.filters)
    try:
        QuietTeardown().after_controller_start(None)
        with caplog.at_level(logging.WARNING, logger=QuietTeardown.LOGGER):
            logger.handle(_record("The actor is dead because its owner has died."))
            logger.handle(_record("The actor is dead because its worker process has died."))
        assert len(caplog.records) == 1
        assert "worker process has died" in str(caplog.records[0].exc_info[1])
    finally:
        logger.filters[:] = before

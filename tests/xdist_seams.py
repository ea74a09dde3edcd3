"""The one place the suite relies on pytest-xdist (3.x) beyond its public API.

- split_scope: xdist's LoadFileScheduling sends each file to one worker, and pytest 9 ignores `xdist_group`
  marks (they rewrite a node id that is read-only now); grouping several files into one unit of work is done
  by overriding the scheduler's `_split_scope`. tests/test_seams.py checks it is there; `make test` uses it.
"""


def scheduler_by(unit_of, config, log):
    """A LoadFileScheduling whose unit of work is unit_of(nodeid) instead of the file."""
    from xdist.scheduler import LoadFileScheduling

    class ByUnit(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return unit_of(nodeid)

    return ByUnit(config, log)

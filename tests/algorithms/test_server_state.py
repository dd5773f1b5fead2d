"""ServerState: per-client tables in ``clients``, the algorithm's other state in ``extra``; both
survive the checkpoint round trip, and a checkpoint from before the split still loads."""
import numpy as np
import torch

from fedopt.algorithms.base import ServerState
from fedopt.algorithms.client_state import ClientTable
from fedopt.checkpoint import decode_checkpoint, encode_checkpoint


def _state():
    params = {"w": torch.arange(3, dtype=torch.float64)}
    table = ClientTable.create(params, np.full(4, 0.25), capacity=2)
    table.put(np.array([2]), {"w": torch.ones(1, 3, dtype=torch.float64)})
    return ServerState(params=params, opt_state={}, round=5, clients={"scaffold_c": table.data},
                       extra={"nonfinite_dropped": 2, "async": {"pending": {3: [1, 2]}}})


def test_round_trip_keeps_clients_and_extra():
    st = _state()
    back = ServerState.from_state_dict(
        decode_checkpoint(encode_checkpoint({"server": st.state_dict()}))["server"])
    assert back.round == 5 and torch.equal(back.params["w"], st.params["w"])
    assert back.extra["nonfinite_dropped"] == 2
    assert back.extra["async"]["pending"] == {3: [1, 2]}
    t = ClientTable(back.clients["scaffold_c"])
    assert torch.equal(t.gather(np.array([2]))["w"], torch.ones(1, 3, dtype=torch.float64))


def test_a_checkpoint_with_one_client_state_dict_is_split():
    st = _state()
    old = {"params": st.params, "opt_state": {}, "round": 5,
           "client_state": {**st.clients, **st.extra}}
    back = ServerState.from_state_dict(old)
    assert set(back.clients) == {"scaffold_c"}
    assert set(back.extra) == {"nonfinite_dropped", "async"}

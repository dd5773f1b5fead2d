"""One generic ``torch.optim.Optimizer`` around any :class:`FunctionalOptimizer`.

The public classes (:mod:`fedopt.optim.optimizers`) only declare their constructor keywords;
the math is the functional ``update``, called per parameter tensor (elementwise optimizers) or
per param group (M-FAC), and written back in place under ``torch.no_grad()``.

Per-parameter ``self.state[p]`` is the functional state flattened: ``step`` (int64),
``beta_pows`` (float64 beta_i^t, bias-corrected optimizers) and the named buffers. For M-FAC the
group's state lives on the group's first parameter.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, ClassVar, Iterable, Mapping, Sequence

import torch
from torch import Tensor

from fedopt import tree
from fedopt.optim.core import FunctionalOptimizer, State
from fedopt.optim.hessian import draw_probe, hutchinson_diag_autograd

#: state keys restored with their saved dtype on load (torch casts other tensors to the
#: parameter's dtype)
EXACT_KEYS = ("step", "beta_pows")


class FunctionalAdapter(torch.optim.Optimizer):
    """``torch.optim.Optimizer`` driving the functional optimizer class ``functional``.

    Hyperparameters are the functional dataclass fields; each param group may override them
    (e.g. its own ``lr``/``weight_decay``) and LR schedulers may change ``group["lr"]``.
    """

    functional: ClassVar[type[FunctionalOptimizer]]

    def __init__(self, params: Iterable[Tensor] | Iterable[dict[str, Any]],
                 **defaults: Any) -> None:
        self._fields = [f.name for f in dataclasses.fields(self.functional)]
        unknown = sorted(set(defaults) - set(self._fields))
        if unknown:
            raise TypeError(f"{type(self).__name__}: unexpected keyword(s) {unknown}")
        if isinstance(defaults.get("betas"), list):
            defaults["betas"] = tuple(defaults["betas"])
        self._build(defaults)  # validate the defaults even before any group exists
        super().__init__(params, defaults)

    # -- construction ------------------------------------------------------------------------
    def _build(self, hparams: Mapping[str, Any]) -> FunctionalOptimizer:
        try:
            return self.functional(**{k: hparams[k] for k in self._fields if k in hparams})
        except ValueError as e:
            raise ValueError(f"{type(self).__name__}: {e}") from None

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        merged = {**self.defaults, **{k: v for k, v in param_group.items() if k != "params"}}
        if isinstance(param_group.get("betas"), list):
            param_group["betas"] = tuple(param_group["betas"])
            merged["betas"] = param_group["betas"]
        self._build(merged)
        params = param_group["params"]
        if isinstance(params, Tensor):
            params = [params]
        elif not isinstance(params, set):  # torch rejects sets (unordered) itself
            params = param_group["params"] = list(params)
        for p in params:
            if isinstance(p, Tensor) and p.is_complex():
                raise ValueError(f"{type(self).__name__} does not support complex parameters")
        super().add_param_group(param_group)

    def functional_for(self, group: Mapping[str, Any]) -> FunctionalOptimizer:
        """The functional optimizer with this group's current hyperparameters."""
        return self._build(group)

    # -- stepping ----------------------------------------------------------------------------
    def _grad(self, p: Tensor) -> Tensor:
        g = p.grad
        if g.is_sparse:
            raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
        if p.is_complex():
            raise RuntimeError(f"{type(self).__name__} does not support complex parameters")
        return g.detach()

    @staticmethod
    def _run_closure(closure: Callable[[], Any] | None) -> Any:
        if closure is None:
            return None
        with torch.enable_grad():
            return closure()

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One optimizer step; ``closure`` (re-evaluating the loss) is run under grad mode."""
        loss = self._run_closure(closure)
        for group in self.param_groups:
            self._update_group(group, self.functional_for(group), {})
        return loss

    def _update_group(self, group: dict[str, Any], fn: FunctionalOptimizer,
                      hessians: Mapping[Tensor, Tensor]) -> None:
        if not fn.elementwise:
            self._update_group_joint(group, fn)
            return
        for p in group["params"]:
            if p.grad is None:
                continue
            g = self._grad(p)
            st = self.state[p]
            fstate = self._unflatten(st, fn, p) if st else fn.init({"p": p})
            h = hessians.get(p)
            new, nstate = fn.update({"p": p}, {"p": g}, fstate,
                                    None if h is None else {"p": h})
            p.copy_(new["p"])
            st.clear()
            st.update(self._flatten(nstate, g))

    def _update_group_joint(self, group: dict[str, Any], fn: FunctionalOptimizer) -> None:
        """Non-elementwise optimizers see the whole group at once. Params without a gradient
        contribute a zero gradient and are not moved."""
        params = group["params"]
        if not params or all(p.grad is None for p in params):
            return
        pdict = {str(i): p for i, p in enumerate(params)}
        gdict = {str(i): torch.zeros_like(p) if p.grad is None else self._grad(p)
                 for i, p in enumerate(params)}
        st = self.state[params[0]]
        fstate = dict(st) if st else fn.init(pdict)
        new, nstate = fn.update(pdict, gdict, fstate)
        for i, p in enumerate(params):
            if p.grad is not None:
                p.copy_(new[str(i)])
        st.clear()
        st.update(nstate)

    @staticmethod
    def _flatten(fstate: State, g: Tensor) -> dict[str, Any]:
        flat = {k: v for k, v in fstate.items() if k != "buffers"}
        for name, buf in fstate["buffers"]["p"].items():
            # never keep a reference to p.grad: backward/zero_grad may change it in place
            flat[name] = buf.clone() if buf is g else buf
        return flat

    @staticmethod
    def _unflatten(st: Mapping[str, Any], fn: FunctionalOptimizer, p: Tensor) -> State:
        fstate = {k: st[k] for k in EXACT_KEYS if k in st}
        fstate["buffers"] = {"p": {b: st[b] if b in st else torch.zeros_like(p)
                                   for b in fn.buffer_names()}}
        return fstate

    # -- checkpoints -------------------------------------------------------------------------
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """torch's loader, except that ``step`` and ``beta_pows`` keep their saved dtypes
        (torch would cast every state tensor to the parameter dtype)."""
        super().load_state_dict(state_dict)
        ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        params = [p for g in self.param_groups for p in g["params"]]
        for pid, p in zip(ids, params):
            saved = state_dict["state"].get(pid)
            if not saved:
                continue
            for k in EXACT_KEYS:
                if k in saved:
                    self.state[p][k] = tree.to(saved[k], p.device)


class HessianAdapter(FunctionalAdapter):
    """Adapter for optimizers that need a Hessian-diagonal estimate (Sophia, AdaHessian).

    On steps where a parameter's step t satisfies ``(t - 1) % update_period == 0`` the
    estimate mean_s z_s * (H z_s) is computed by double backward through ``p.grad`` (so the
    user calls ``loss.backward(create_graph=True)``), with probes z drawn from this optimizer's
    own seeded generator. ``step(hessian=...)`` supplies an estimate instead (one tensor per
    parameter in param-group order, ``None`` allowed, or a dict ``{param: tensor}``); a supplied
    estimate enters the Hessian EMA on every step it is given.
    """

    def __init__(self, params: Iterable[Tensor] | Iterable[dict[str, Any]], *, seed: int = 0,
                 generator: torch.Generator | None = None, **defaults: Any) -> None:
        if generator is None:
            if isinstance(seed, bool) or not isinstance(seed, int):
                raise ValueError(f"invalid seed: {seed!r} (need an integer)")
            generator = torch.Generator().manual_seed(seed)
        self.generator = generator
        super().__init__(params, **defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None,
             hessian: Sequence[Tensor | None] | Mapping[Tensor, Tensor] | None = None) -> Any:
        loss = self._run_closure(closure)
        fns = [self.functional_for(group) for group in self.param_groups]
        if hessian is not None:
            hmap = self._supplied(hessian)
            fns = [fn.replace(update_period=1) for fn in fns]
        else:
            hmap = self._estimate(fns)
        for group, fn in zip(self.param_groups, fns):
            self._update_group(group, fn, hmap)
        return loss

    def _supplied(self, hessian: Sequence[Tensor | None] | Mapping[Tensor, Tensor]
                  ) -> dict[Tensor, Tensor]:
        params = [p for g in self.param_groups for p in g["params"]]
        if isinstance(hessian, Mapping):
            pairs = list(hessian.items())
        else:
            hessian = list(hessian)
            if len(hessian) != len(params):
                raise ValueError(f"{type(self).__name__}: hessian has {len(hessian)} entries, "
                                 f"expected one per parameter ({len(params)})")
            pairs = list(zip(params, hessian))
        out: dict[Tensor, Tensor] = {}
        for p, h in pairs:
            if h is None:
                continue
            if h.shape != p.shape:
                raise ValueError(f"{type(self).__name__}: hessian of shape {tuple(h.shape)} "
                                 f"for a parameter of shape {tuple(p.shape)}")
            out[p] = h.detach().to(device=p.device, dtype=p.dtype)
        return out

    def _estimate(self, fns: Sequence[FunctionalOptimizer]) -> dict[Tensor, Tensor]:
        """Hutchinson estimates for the parameters whose next step wants one, grouped by
        (num_samples, distribution); probes drawn in param-group order."""
        todo: dict[tuple[int, str], list[Tensor]] = {}
        for group, fn in zip(self.param_groups, fns):
            for p in group["params"]:
                if p.grad is None:
                    continue
                self._grad(p)  # rejects sparse gradients before any double backward
                st = self.state[p]
                t = int(st["step"]) + 1 if st else 1
                if fn.needs_hessian_at(t):
                    todo.setdefault((fn.num_samples, fn.hessian_distribution), []).append(p)
        if not todo:
            return {}
        if not any(p.grad.requires_grad for ps in todo.values() for p in ps):
            raise RuntimeError(f"{type(self).__name__} needs second derivatives: call "
                               f"loss.backward(create_graph=True) before step(), or pass "
                               f"step(hessian=...)")
        out: dict[Tensor, Tensor] = {}
        keys = list(todo)
        for j, (num_samples, dist) in enumerate(keys):
            ps = todo[(num_samples, dist)]
            if not any(p.grad.requires_grad for p in ps):  # gradients constant: H = 0 here
                out.update((p, torch.zeros_like(p)) for p in ps)
                continue
            probes = [[draw_probe(p, dist, self.generator) for p in ps]
                      for _ in range(num_samples)]
            est = hutchinson_diag_autograd(ps, [p.grad for p in ps], probes,
                                           retain_graph=j < len(keys) - 1)
            out.update(zip(ps, est))
        return out

    def state_dict(self) -> dict[str, Any]:
        sd = super().state_dict()
        sd["generator_state"] = self.generator.get_state()
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        gen_state = state_dict.pop("generator_state", None)
        super().load_state_dict(state_dict)
        if gen_state is not None:
            self.generator.set_state(gen_state)

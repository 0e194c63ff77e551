"""Kronecker-factored Fisher blocks (K-FAC: Martens & Grosse 2015; its convolutional form KFC: Grosse & Martens
2016; for TRPO, ACKTR: Wu et al. 2017), as an approximate inverse of the damped Fisher (F + lambda I)^-1 for the
natural-gradient step: the direction itself (TRPOConfig.natural_gradient 'kfac') or CG's preconditioner ('kfac_cg').

F is the Fisher of the mean KL the line search bounds, F = (1/n) sum_i J_i^T M_i J_i, with M_i the exact Fisher
metric of the action distribution at sample i's params (distributions.fisher_metric_product), not a Monte Carlo
estimate from sampled actions (unless `samples` asks for one: below). Factoring M_i = L_i L_i^T (an
eigendecomposition of the small matrix M_i), backprop of each column of L_i to a layer's output s gives vectors g_ik
with sum_k g_ik g_ik^T = J_s,i^T M_i J_s,i exactly:

    Linear   s = W a + b:       A = (1/n) sum_i abar_i abar_i^T,          G = (1/n) sum_i sum_k g_ik g_ik^T
    Conv2d   s_t = W abar_t:    A = (1/n) sum_i sum_t abar_it abar_it^T,  G = (1/(n T)) sum_i sum_t sum_k g_ikt g_ikt^T

with abar = [a, 1] (the bias as a last input column; abar_t the patch at output position t, F.unfold) and T the output
positions. The layer's block of F, over its weight and bias as one matrix [W | b] read row by row, is then G (x) A:
exact for one sample of a Linear (and of a Conv2d with one output position); for a batch it assumes activations
independent of output gradients (and KFC's spatial homogeneity and uncorrelated positions). Between layers F is taken
block-diagonal. Parameters no layer owns get their exact block: a Gaussian's state-independent log std (the mean of
M_i over its outputs, 2 I for the diagonal Gaussian) and gSDE's log-std matrix (its exact block, one F x F matrix per
action: its metric is diagonal in the log std and the features enter the variance detached); any other parameter,
and a recurrent cell (its Linears are applied once per time step: no Kronecker block of one application), is refused.

Sampled G (`samples` m > 0, TrustRegionRule's config.kfac_samples; ACKTR's Monte-Carlo Fisher, Martens & Grosse
section 5): the m columns L_i r_i instead of L_i's, r_i [head_dim, m] with independent entries +-1/sqrt(m) drawn per
sample from the generator given (E[r_i r_i^T] = I, so E[L_i r_i r_i^T L_i^T] = M_i and each G is unbiased; A is
exact), m backward passes instead of head_dim. Used only where m < head_dim (else the exact columns, nothing drawn).
The sampled g_ik give no exact F v, so the product for beta is then ExactFisher's, exact as before.

Damping is Tikhonov's, factored as Martens & Grosse (section 6.3): (A + pi sqrt(lambda) I) (x) (G + sqrt(lambda)/pi I),
pi = sqrt((tr A / dim A) / (tr G / dim G)), which approximates G (x) A + lambda I; the exact blocks get + lambda I.

Cost per step: one forward pass, one backward pass per distribution parameter that depends on the layers (head_dim
of them: the action count, or the action dimension of a Gaussian's mean; m with sampled G), and the inverses of the
factors. A convolution's patches are cut once in that pass and serve A and the weight's gradient, and its backward
avoids oneDNN's slow kernels where it can (kfac_conv.py); the caller's surrogate gradient reuses the pass. The exact
(F + lambda I) v and v^T (F + lambda I) v for beta come from the same pass: `LayerwiseFisher`, a few matrix products
per layer with the kept output gradients (head_dim x the layers' outputs, up to GRADIENT_LIMIT), or above that
`ExactFisher` (forward-mode J v and one backward, no double backward). It reads the actor (its
modules, and their inputs and outputs in that one forward pass); it writes no parameter, takes no config and draws
random numbers only for sampled G, from the generator it is given.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor, nn
from torch.func import functional_call, jvp

from trpo.distributions import ActionDistribution, Params, SDEHead
from trpo.kfac_conv import ConvOutput, conv_input_moment, kept_patches, moment, plain
from trpo.networks import Actor

GRADIENT_LIMIT = 1 << 24  # elements: the layers' output gradients kfac() keeps for LayerwiseFisher (head_dim x outputs)


@dataclass(frozen=True)
class KroneckerBlock:
    """One Linear or Conv2d layer: where its weight and bias sit in theta, and its factors A (inputs) and G (output
    gradients), undamped; the block of F over [W | b] (row-major) is kron(G, A)."""

    name: str
    weight: slice
    bias: slice | None
    a: Tensor  # [in (+1), in (+1)]: in = C_in * kh * kw for a Conv2d
    g: Tensor  # [out, out]


@dataclass(frozen=True)
class ExactBlock:
    """Parameters no layer owns, with their exact Fisher block: theta[index] viewed as `shape` ([A] or gSDE's
    [F, A]); `matrices` [m, d, d] act on theta[index] reshaped to [d] (m = 1) or on each column of the [F, A] view."""

    name: str
    index: slice
    shape: tuple[int, ...]
    matrices: Tensor
    columns: bool  # True: one matrix per column of the [F, A] view (gSDE)


class KFAC:
    """The blocks of one policy step, and v -> (F_kfac + damping)^-1 v (`inverse`) and v -> F_kfac v (`product`,
    undamped) on flat vectors in the order of actor.named_parameters()."""

    def __init__(self, kron: list[KroneckerBlock], exact: list[ExactBlock], damping: float,
                 params: Params | None = None, fisher: ExactFisher | LayerwiseFisher | None = None) -> None:
        self.kron, self.exact, self.damping = kron, exact, damping
        self.params = params  # the forward pass's distribution params, their graph kept (the caller's g reuses it)
        self.fisher = fisher  # the exact (F + damping I) on the same samples (LayerwiseFisher, ExactFisher)

    @cached_property
    def _inverses(self) -> tuple[list[tuple[Tensor, Tensor]], list[Tensor]]:
        """The damped factors' inverses (per layer: A's and G's; per exact block), at the first `inverse`: CG on
        fisher_product 'layerwise' asks for none."""
        root = math.sqrt(self.damping)
        layers = []
        for block in self.kron:
            pi = _pi(block.a, block.g)
            layers.append((_spd_inverse(block.a, pi * root), _spd_inverse(block.g, root / pi)))
        return layers, [_spd_inverse(block.matrices, self.damping) for block in self.exact]

    def inverse(self, v: Tensor) -> Tensor:
        """(A + pi sqrt(lambda) I)^-1 (x) (G + sqrt(lambda)/pi I)^-1 per layer, (B + lambda I)^-1 per exact block."""
        layers, exact = self._inverses
        out = torch.empty_like(v)
        for block, (a_inv, g_inv) in zip(self.kron, layers, strict=True):
            _put(block, out, g_inv @ _matrix(block, v) @ a_inv)
        for eblock, inv in zip(self.exact, exact, strict=True):
            _put_exact(eblock, out, inv, v)
        return out

    def product(self, v: Tensor) -> Tensor:
        """F_kfac v, undamped: G V A per layer, B v per exact block."""
        out = torch.empty_like(v)
        for block in self.kron:
            _put(block, out, block.g @ _matrix(block, v) @ block.a)
        for eblock in self.exact:
            _put_exact(eblock, out, eblock.matrices, v)
        return out


def kfac(actor: Actor, dist: ActionDistribution, obs: Tensor, damping: float, samples: int = 0,
         generator: torch.Generator | None = None, factors: bool = True) -> KFAC:
    """The K-FAC blocks of `actor` (at its current parameters, pi_old) on observations obs [n, D], damped by lambda =
    `damping` (> 0: the factors are often singular); G from `samples` random projections of the metric's root (drawn
    from `generator`) where 0 < samples < head_dim, else exact. `factors` False: the pass and the exact product
    (`fisher`) only, the blocks' A and G left empty (CG on fisher_product 'layerwise': no inverse is asked for).
    ValueError for an actor it has no blocks for."""
    if actor.cell is not None or not isinstance(obs, Tensor):
        raise ValueError("K-FAC takes feed-forward actors: a recurrent cell applies its layers once per time step")
    names = {id(p): name for name, p in actor.named_parameters()}
    offsets, start = {}, 0
    for name, p in actor.named_parameters():
        offsets[name] = slice(start, start + p.numel())
        start += p.numel()
    layers = [(name, m) for name, m in actor.named_modules() if isinstance(m, nn.Linear | nn.Conv2d)]
    seen: dict[str, list[tuple[Tensor, Tensor]]] = {name: [] for name, _ in layers}
    cols: dict[str, Tensor | None] = {}  # each convolution's patches, if kept
    params = _recorded_forward(actor, obs, layers, seen, cols)
    layers = [(name, m) for name, m in layers if seen[name]]  # e.g. a head's Linear the forward pass never runs
    if any(len(seen[name]) > 1 for name, _ in layers):
        raise ValueError("K-FAC needs each layer applied once per sample (a shared layer has no Kronecker block)")
    n = obs.shape[0]
    grads, kept = _output_gradient_moments(dist, params, [seen[name][0][1] for name, _ in layers], GRADIENT_LIMIT,
                                           samples, generator, factors)
    kron, inputs = [], []
    for (name, module), g in zip(layers, grads, strict=True):
        x, out = seen[name][0]
        if isinstance(module, nn.Conv2d) and not plain(module):
            raise ValueError(f"K-FAC: {name} is a grouped convolution, or padded otherwise than by zeros given as "
                             "numbers")
        if not factors:
            a = g
        elif isinstance(module, nn.Conv2d):
            a = conv_input_moment(module, x, cols[name]) / n
            g = g / (n * out.shape[-1] * out.shape[-2])
        else:
            a, g = moment(x.reshape(-1, x.shape[-1]), module.bias is not None) / n, g / n
        bias = offsets[f"{name}.bias"] if module.bias is not None else None
        kron.append(KroneckerBlock(name, offsets[f"{name}.weight"], bias, a, g))
        inputs.append(cols[name] if isinstance(module, nn.Conv2d) else x.reshape(-1, x.shape[-1]))
    owned = {f"{name}.{kind}" for name, m in layers for kind in ("weight", "bias") if getattr(m, kind) is not None}
    exact = [_exact_block(actor, dist, params, seen, names[id(p)], offsets[names[id(p)]])
             for p in actor.parameters() if names[id(p)] not in owned]
    fisher: ExactFisher | LayerwiseFisher
    if kept is not None and all(x is not None for x in inputs):
        fisher = LayerwiseFisher(kron, exact, kept, [x for x in inputs if x is not None], n, damping)
    else:
        fisher = ExactFisher(actor, dist, obs, params, damping, layers, cols)
    return KFAC(kron, exact, damping, params, fisher)


class ExactFisher:
    """The exact Fisher of the mean KL on the same samples at pi_old, F = (1/n) sum_i J_i^T M_i J_i, without the double
    backward of trust_region.autograd_linearization: J v by forward-mode AD (torch.func.jvp, one pass), J^T u by one
    backward through a recorded forward pass (kfac_conv's backward for a convolution). `product(v)` is
    (F + damping I) v, as trust_region.gauss_newton_fvp gives it (equal to float rounding); `quadratic(v)` is
    v^T (F + damping I) v from J v alone, which is all beta = sqrt(2 delta / x^T F x) needs. Both at the parameters
    the actor had when it was built."""

    def __init__(self, actor: Actor, dist: ActionDistribution, obs: Tensor, params: Params, damping: float,
                 layers: Sequence[tuple[str, nn.Module]], cols: dict[str, Tensor | None]) -> None:
        self.actor, self.dist, self.obs, self.damping, self.layers = actor, dist, obs, damping, layers
        self.cols = cols  # the convolutions' kept patches: the same in every pass at these parameters
        self.theta = {name: p.detach() for name, p in actor.named_parameters()}
        self.old = tuple(p.detach() for p in params)

    def jvp(self, v: Tensor) -> Params:
        """J v, the params' directional derivative along v (flat, in named_parameters order)."""
        tangents, start = {}, 0
        for name, p in self.theta.items():
            tangents[name] = v[start : start + p.numel()].view_as(p)
            start += p.numel()
        result = jvp(lambda tensors: functional_call(self.actor, tensors, (self.obs,)), (self.theta,), (tangents,))
        return tuple(result[1])

    def quadratic(self, v: Tensor) -> Tensor:
        """v^T (F + damping I) v = (1/n) sum_i <J_i v, M_i J_i v> + damping |v|^2."""
        jv = self.jvp(v)
        inner = sum(((a * b).sum() for a, b in zip(jv, self.dist.fisher_metric_product(self.old, jv), strict=True)),
                    v.new_zeros(()))
        return inner / self.obs.shape[0] + self.damping * (v @ v)

    def product(self, v: Tensor) -> Tensor:
        """(F + damping I) v = (1/n) J^T M J v + damping v."""
        n = self.obs.shape[0]
        u = tuple(t / n for t in self.dist.fisher_metric_product(self.old, self.jvp(v)))
        leaves = {name: p.detach().requires_grad_(True) for name, p in self.theta.items()}
        out = _recorded_forward(self.actor, self.obs, self.layers, None, self.cols, leaves)
        inner = sum(((a * b).sum() for a, b in zip(out, u, strict=True)), v.new_zeros(()))
        grads = torch.autograd.grad(inner, list(leaves.values()), allow_unused=True)
        flat = [torch.zeros_like(p) if g is None else g for g, p in zip(grads, leaves.values(), strict=True)]
        return torch.cat([g.reshape(-1) for g in flat]) + self.damping * v


class LayerwiseFisher:
    """ExactFisher's (F + damping I) v and v^T (F + damping I) v from what kfac() kept, with no further pass through
    the network. The parameters' gradient of <params_i, L_i e_k> is, on a layer's [W | b], sum_t g_ikt abar_it^T
    (g_ikt its output's gradient at position t, abar_it its input or patch with a 1); so, with V the layer's part
    of v as [V_W | v_b],

        c_ik  = <L_i e_k, J_i v> = sum_layers sum_t <g_ikt, V abar_it>               (the layers' share of J v)
        v^T F v = (1/n) sum_ik c_ik^2 + the exact blocks' v_e^T B v_e
        F v   = per layer (1/n) sum_i sum_t (sum_k c_ik g_ikt) abar_it^T,   B v_e per exact block

    a few matrix products per layer (exact: F has no cross terms between the layers and the exact blocks). Its memory
    is the kept g, head_dim times the layers' outputs (kfac() keeps them up to GRADIENT_LIMIT, and falls back to
    ExactFisher above it or where a convolution's patches were not kept)."""

    def __init__(self, kron: Sequence[KroneckerBlock], exact: Sequence[ExactBlock], grads: Sequence[Tensor],
                 inputs: Sequence[Tensor], n: int, damping: float) -> None:
        self.kron, self.exact, self.n, self.damping = kron, exact, n, damping
        self.grads, self.inputs = grads, inputs  # [K, out, n T] and [n T, in] per layer (T = 1 for a Linear)

    def coefficients(self, v: Tensor) -> Tensor:
        """c [K, n]: c_ik = <L_i e_k, J_i v> (its temporaries the size of one layer output, not K)."""
        total = self.grads[0].new_zeros(self.grads[0].shape[0], self.n)
        for block, g, x in zip(self.kron, self.grads, self.inputs, strict=True):
            w = v[block.weight].view(g.shape[1], -1)
            y = w @ x.t() if block.bias is None else torch.addmm(v[block.bias].unsqueeze(1), w, x.t())  # V abar_it
            buffer = torch.empty_like(y)
            for k in range(g.shape[0]):
                total[k] += torch.mul(g[k], y, out=buffer).view(g.shape[1], self.n, -1).sum((0, 2))
        return total

    def quadratic(self, v: Tensor) -> Tensor:
        """v^T (F + damping I) v."""
        c = self.coefficients(v)
        total = (c * c).sum() / self.n + self.damping * (v @ v)
        for eblock in self.exact:
            part = v[eblock.index].view(eblock.shape)
            total += torch.einsum("afg,fa,ga->", eblock.matrices, part, part) if eblock.columns \
                else part @ eblock.matrices[0] @ part
        return total

    def product(self, v: Tensor) -> Tensor:
        """(F + damping I) v."""
        c = self.coefficients(v) / self.n
        out = torch.empty_like(v)
        for block, g, x in zip(self.kron, self.grads, self.inputs, strict=True):
            grads = g.view(g.shape[0], g.shape[1], self.n, -1)
            h = grads[0] * c[0].view(1, -1, 1)  # sum_k c_ik g_ikt, [out, n, T]
            for k in range(1, g.shape[0]):
                h.addcmul_(grads[k], c[k].view(1, -1, 1))
            h = h.view(g.shape[1], -1)
            out[block.weight] = (h @ x).reshape(-1)
            if block.bias is not None:
                out[block.bias] = h.sum(1)
        for eblock in self.exact:
            _put_exact(eblock, out, eblock.matrices, v)
        return out + self.damping * v


# --- the factors -------------------------------------------------------------------------------------------------


def _recorded_forward(actor: Actor, obs: Tensor, layers: Sequence[tuple[str, nn.Module]],
                      seen: dict[str, list[tuple[Tensor, Tensor]]] | None, cols: dict[str, Tensor | None],
                      tensors: dict[str, Tensor] | None = None) -> Params:
    """actor(obs) with its graph (at parameters `tensors` if given), each layer's (input, output) appended to
    seen[name]; a convolution K-FAC has a block for backpropagates through kfac_conv.ConvOutput (the same values, a
    faster backward) with its patches cols[name] (kfac_conv.kept_patches; cut here unless cols has them)."""

    def record(module: nn.Module, inputs: tuple[Tensor, ...], out: Tensor, name: str) -> Tensor:
        if isinstance(module, nn.Conv2d) and plain(module):
            if name not in cols:
                cols[name] = kept_patches(module, inputs[0].detach())
            out = ConvOutput.apply(inputs[0], module.weight, module.bias, out.detach(), module, cols[name])
        if seen is not None:
            seen[name].append((inputs[0].detach(), out))
        return out

    hooks = [m.register_forward_hook(lambda m, i, o, name=name: record(m, i, o, name)) for name, m in layers]
    try:
        with torch.enable_grad():
            params: Params = actor(obs) if tensors is None else functional_call(actor, tensors, (obs,))
    finally:
        for hook in hooks:
            hook.remove()
    return params


def _output_gradient_moments(dist: ActionDistribution, params: Params, outputs: list[Tensor], limit: int = 0,
                             samples: int = 0, generator: torch.Generator | None = None, factors: bool = True
                             ) -> tuple[list[Tensor], list[Tensor] | None]:
    """sum_i sum_k g_ik g_ik^T per layer output (summed over positions t for a convolution), g_ik the gradient at the
    output of <params_i, L_i e_k>, M_i = L_i L_i^T; only the params that depend on the layers enter (the others add
    zero rows to J). Also the g_ik themselves, [K, out, n T] per layer (as `moment` reads them), where they number
    at most `limit` elements in all (else None). Where 0 < samples < K: L_i r_i instead of L_i (`probes`), K =
    samples, and no g_ik (they are not the exact columns LayerwiseFisher needs). `factors` False: the g_ik only, the
    moments left empty ([0, 0])."""
    targets = {o.grad_fn for o in outputs}
    used = [j for j, p in enumerate(params) if p.grad_fn is not None and _reaches(p.grad_fn, targets)]
    detached = tuple(p.detach() for p in params)
    sizes = [params[j].shape[-1] for j in used]
    # M_i on the used params, column by column from the metric's product with unit tangents: [n, d, d].
    columns = []
    for j, size in zip(used, sizes, strict=True):
        for c in range(size):
            tangent = tuple(torch.zeros_like(p) for p in detached)
            tangent[j][:, c] = 1.0
            product = dist.fisher_metric_product(detached, tangent)
            columns.append(torch.cat([product[i] for i in used], -1))
    metric = torch.stack(columns, -1)
    values, vectors = torch.linalg.eigh(0.5 * (metric + metric.transpose(1, 2)))
    roots = vectors * values.clamp_min(0).sqrt().unsqueeze(1)  # L_i, M_i = L_i L_i^T
    sampled = 0 < samples < roots.shape[-1]
    if sampled:  # m columns L_i r_i, E[r_i r_i^T] = I
        roots = roots @ probes(roots.shape[0], roots.shape[-1], samples, generator).to(roots)
    moments = [o.new_zeros((o.shape[1],) * 2 if factors else (0, 0)) for o in outputs]
    count = roots.shape[-1]
    kept = [o.new_empty(count, o.shape[1], o.numel() // o.shape[1]) for o in outputs] \
        if not sampled and count * sum(o.numel() for o in outputs) <= limit else None
    for k in range(count):
        pieces = torch.split(roots[..., k], sizes, -1)
        inner = sum(((params[j] * piece).sum() for j, piece in zip(used, pieces, strict=True)),
                    params[0].new_zeros(()))
        grads = torch.autograd.grad(inner, outputs, retain_graph=True)
        for j, (total, g) in enumerate(zip(moments, grads, strict=True)):
            # [out, n] or a convolution's [C_out, n T] (positions contiguous: a cheaper copy than [n T, C_out]).
            view = g.t() if g.dim() == 2 else g.flatten(2).transpose(0, 1)
            if kept is None:
                flat = view.reshape(view.shape[0], -1)
            else:
                flat = kept[j][k]
                flat.view_as(view).copy_(view)
            if factors:
                total += flat @ flat.t()
    return moments, kept


def probes(n: int, dim: int, samples: int, generator: torch.Generator | None) -> Tensor:
    """r [n, dim, samples]: independent Rademacher entries +-1/sqrt(samples), so that E[r_i r_i^T] = I for each i."""
    device = None if generator is None else generator.device
    signs = torch.randint(0, 2, (n, dim, samples), generator=generator, device=device) * 2 - 1
    return signs / math.sqrt(samples)


def _reaches(node: object, targets: Collection[object]) -> bool:
    """Whether the autograd graph below `node` passes through one of `targets` (a layer output's grad_fn)."""
    stack, visited = [node], set()
    while stack:
        current = stack.pop()
        if current in targets:
            return True
        if current is None or id(current) in visited:
            continue
        visited.add(id(current))
        stack.extend(child for child, _ in current.next_functions)  # type: ignore[attr-defined]
    return False


def _exact_block(actor: Actor, dist: ActionDistribution, params: Params, seen: dict[str, list[tuple[Tensor, Tensor]]],
                 name: str, index: slice) -> ExactBlock:
    """The exact Fisher block of a head's log std: (1/n) sum_i J_i^T M_i J_i over it (no cross terms with the
    layers: the Gaussian's metric has none between mean and log std, and gSDE's features enter detached)."""
    head, detached = actor.head, tuple(p.detach() for p in params)
    if name != "head.log_std" or len(params) != 2:
        raise ValueError(f"K-FAC has no block for parameter {name!r}: only Linear, Conv2d and a Gaussian's log std")
    # The metric's diagonal on the log-std outputs, [n, A]; the Gaussian's is 2, with no cross terms.
    diag = dist.fisher_metric_product(detached, (torch.zeros_like(detached[0]), torch.ones_like(detached[1])))[1]
    n = diag.shape[0]
    if isinstance(head, SDEHead):  # d log_std_ia / d log_std[f, a] = z_if^2 sigma_fa^2 / var_ia =: w[i, f, a]
        z = seen["head.linear"][0][0]
        w = z.pow(2).unsqueeze(-1) * torch.exp(2 * head.log_std.detach()) / torch.exp(2 * detached[1]).unsqueeze(1)
        matrices = torch.einsum("ifa,ia,iga->afg", w, diag, w) / n
        return ExactBlock(name, index, tuple(head.log_std.shape), matrices, True)
    # A state-independent log std: log_std_i = log_std for every sample, J_i = I.
    return ExactBlock(name, index, (diag.shape[1],), torch.diag(diag.mean(0)).unsqueeze(0), False)


# --- applying the blocks -------------------------------------------------------------------------------------


def _pi(a: Tensor, g: Tensor) -> float:
    """Martens & Grosse's split of the damping between the factors: sqrt of the ratio of their mean eigenvalues."""
    ratio = float((a.trace() / a.shape[0]) / (g.trace() / g.shape[0]))
    return math.sqrt(ratio) if math.isfinite(ratio) and ratio > 0 else 1.0


def _spd_inverse(matrix: Tensor, damping: float) -> Tensor:
    """(matrix + damping I)^-1 of symmetric positive semi-definite matrices (a batch of them too), by Cholesky."""
    eye = torch.eye(matrix.shape[-1], dtype=matrix.dtype, device=matrix.device)
    return torch.cholesky_inverse(torch.linalg.cholesky(matrix + damping * eye))


def _matrix(block: KroneckerBlock, v: Tensor) -> Tensor:
    """A layer's part of v as the matrix [V_W | v_b], [out, in (+1)]."""
    out = block.g.shape[0]
    w = v[block.weight].view(out, -1)
    return w if block.bias is None else torch.cat([w, v[block.bias].view(out, 1)], 1)


def _put(block: KroneckerBlock, out: Tensor, matrix: Tensor) -> None:
    if block.bias is None:
        out[block.weight] = matrix.reshape(-1)
    else:
        out[block.weight] = matrix[:, :-1].reshape(-1)
        out[block.bias] = matrix[:, -1]


def _put_exact(block: ExactBlock, out: Tensor, matrices: Tensor, v: Tensor) -> None:
    part = v[block.index].view(block.shape)
    if block.columns:  # [F, A]: matrix a acts on column a
        out[block.index] = torch.einsum("afg,ga->fa", matrices, part).reshape(-1)
    else:
        out[block.index] = matrices[0] @ part

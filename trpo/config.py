"""Typed configuration: one documented field per hyperparameter (`TRPOConfig`), validated on construction
(trpo.validation's `validate`, importable from here too), the fields' docs (`field_docs`) and the field-aware
coercion of CLI/YAML values (`coerce_fields`, over trpo.coerce's `typed`).

The CLI (`trpo train --max-kl 0.02`) and YAML files (`max_kl: 0.02`) map one-to-one onto the fields of
`TRPOConfig` (dashes on the command line, underscores in YAML and Python). Which values a run gets (field defaults
< preset < YAML file < command-line flags) is trpo.resolve's job. This module must not import trpo.resolve or
trpo.presets (they import it): it sits below them, over trpo.coerce, trpo.errors and trpo.validation only. The
names that moved to trpo.resolve stay importable from here for old imports, forwarded on first use (`__getattr__`).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import itertools
from dataclasses import dataclass, fields
from typing import Any, Literal, get_type_hints

from trpo.coerce import SEED_MAX, EnvKwargs, Wrappers, check_seed, typed
from trpo.errors import ConfigError
from trpo.validation import available_cores, validate

AdvantageEstimator = Literal["gae", "td", "return"]
UpdateRule = Literal["trpo", "npg", "penalty", "pg", "ppo"]
KLConstraint = Literal["mean", "max"]
KLPenalty = Literal["fixed", "adaptive", "theory"]
FisherProduct = Literal["gauss_newton", "hessian", "layerwise"]
NaturalGradient = Literal["cg", "kfac", "kfac_cg"]
VectorMode = Literal["sync", "subprocess", "ray", "envpool"]
Activation = Literal["tanh", "relu"]
ImageEncoder = Literal["paper", "nature"]
ObsEncoding = Literal["auto", "mlp", "cnn"]
Sampling = Literal["single_path", "vine"]
Recurrent = Literal["none", "lstm", "gru"]
ObsNormUpdate = Literal["batch", "step"]


@dataclass(frozen=True)
class TRPOConfig:
    """Every hyperparameter of a TRPO run. Defaults follow sb3-contrib's TRPO unless a field says otherwise."""

    # --- the environment (envs.EnvMaker; recorded, so eval, resume and export make the same env) ---
    env_kwargs: EnvKwargs | None = None
    """Keyword arguments for gym.make (a mapping in YAML, JSON on the command line: --env-kwargs '{"g": 9.81}');
    the preset is still chosen from the env id."""
    max_episode_steps: int | None = None
    """Episode limit replacing the env's registered one (a TimeLimit), empty: the env's own."""
    env_wrappers: Wrappers = ()
    """Gymnasium wrapper classes (gymnasium.Wrapper subclasses; nothing else is called) applied in order after
    gym.make, each 'module:Class' or, with keyword arguments, 'module:Class'
    followed by '=' and a JSON object on the command line (--env-wrappers, repeatable) or a mapping
    {module:Class: {arg: value}} in a YAML list (rl-zoo's env_wrapper form)."""

    # --- data collection ---
    num_envs: int = 1
    """Number of vectorized environments N."""
    steps_per_env: int = 2048
    """Environment steps per env per update; a batch holds num_envs * steps_per_env transitions."""
    vector_mode: VectorMode = "sync"
    """'sync' steps all envs in this process; 'subprocess' splits them over worker processes (num_workers), 'ray'
    over Ray actors (num_workers, on this machine or a cluster: ray_address), each collecting its share of the
    batch with a copy of the frozen policy while this process fits the critic on the previous batch. Bit-identical
    runs in these modes (until a Ray actor is restarted). 'envpool' (pip install 'trpo[envpool]'): envpool's own
    implementation of the env id, all envs stepped with one call on num_workers C++ threads: deterministic, but
    its envs are not Gymnasium's (trpo/rollout/envpool_backend.py says how they differ)."""
    num_workers: int = 0
    """Worker processes, Ray actors or envpool threads (0: one per env, at most one per core of this machine).
    Fewer leave a core to this process's value fit, which overlaps the collection."""
    ray_address: str | None = None
    """vector_mode 'ray': the cluster to join ('auto', 'ray://host:10001', 'host:6379'); empty: a Ray runtime on
    this machine, started for the run and stopped after it."""
    max_worker_restarts: int = 3
    """vector_mode 'ray': how often one actor's share of a batch is collected again by a new actor after its
    process died, before the run ends with an error (its latest checkpoint intact)."""

    sampling: Sampling = "single_path"
    """'single_path': the policy learns from the batch's trajectories (advantages below). 'vine' (the TRPO paper's
    section 5.2, vine.py): it learns from branches instead: from vine_states states per env of the batch's
    trajectories, vine_actions actions each, every one followed by a short rollout from the restored env state
    with common random numbers; the critic still learns from the trajectories. Branch steps count as env steps."""
    vine_states: int = 16
    """vine: rollout-set states per env per batch, drawn uniformly from the batch's steps."""
    vine_actions: int = 4
    """vine: actions per rollout-set state, sampled from pi_old (the self-normalized estimator); Discrete spaces
    try every action instead while vine_all_actions is on."""
    vine_all_actions: bool = True
    """vine, Discrete action spaces: branch on every action (the estimator sum_a pi(a|s) Q(s, a))."""
    vine_horizon: int = 32
    """vine: env steps per branch at most (the first action included); a branch also ends with its episode."""
    vine_bootstrap: bool = True
    """vine: add gamma^H V(s_H) from the critic where a branch is cut off (or truncated by a time limit); off: the
    paper's truncated Monte Carlo return."""

    # --- advantages (advantages.py) ---
    gamma: float = 0.99
    """Discount factor."""
    gae_lambda: float = 0.95
    """GAE lambda (only used by advantage='gae')."""
    advantage: AdvantageEstimator = "gae"
    """Advantage estimator: 'gae' (GAE(gamma, lambda)), 'td' (one-step TD residual), 'return' (discounted return)."""
    normalize_advantages: bool = True
    """Shift and scale advantages to mean 0, std 1 per batch."""

    # --- policy step (update_rules.py; trust_region.py for trpo and npg) ---
    update_rule: UpdateRule = "trpo"
    """'trpo': natural gradient step scaled to the trust region, line search with KL and improvement checks;
    'npg': natural policy gradient, the same step without line search; 'penalty': Adam on L - beta * KL;
    'pg': Adam on L (vanilla policy gradient); 'ppo': Adam on PPO's clipped surrogate."""
    max_kl: float = 0.01
    """Trust-region size delta (trpo, npg): the bound on the KL(pi_old || pi_new) over the batch."""
    kl_constraint: KLConstraint = "mean"
    """trpo: the line search bounds the 'mean' KL over the batch's states (the paper's practical algorithm) or
    their 'max' KL (the constraint of its theorem)."""
    cg_iters: int = 15
    """Maximum conjugate-gradient iterations k for F x = g."""
    cg_damping: float = 0.1
    """Damping lambda: CG solves (F + lambda I) x = g."""
    cg_tol: float = 1e-10
    """CG stops early once the squared residual norm falls below this."""
    fisher_product: FisherProduct = "gauss_newton"
    """'gauss_newton': F v = J^T M J v with the analytic Fisher metric M of the action distribution;
    'hessian': double backprop through the mean KL. Both equal the KL Hessian at theta_old. 'layerwise': the same
    J^T M J v from each layer's kept output gradients of the columns of M's root (K-FAC's pass: one backward pass per
    column, head_dim of them), then a few matrix products per layer and product, no pass through the network
    (kfac.LayerwiseFisher; feed-forward actors). Cheaper when CG makes many products on a large batch or a CNN."""
    fisher_subsample: int = 1
    """Use every k-th sample of the batch for Fisher-vector products (baselines used 5), and for K-FAC's factors."""
    natural_gradient: NaturalGradient = "cg"
    """How trpo and npg find x ~ (F + cg_damping I)^-1 g: 'cg', conjugate gradient on Fisher-vector products
    (fisher_product); 'kfac', K-FAC's Kronecker-factored Fisher blocks of the Linear and Conv2d layers inverted
    directly (Martens & Grosse 2015; ACKTR), the step then scaled to max_kl with one exact product and line-searched
    as usual; 'kfac_cg', CG preconditioned with those blocks. The blocks take the distribution's exact Fisher
    metric, cg_damping (> 0) as Tikhonov damping, and feed-forward actors (trpo/kfac.py)."""
    kfac_samples: int = 0
    """K-FAC's output-gradient factors G (natural_gradient 'kfac' or 'kfac_cg'): 0, exact, from the columns of the
    action distribution's Fisher metric root, one backward pass each (head_dim: the action count, or a Gaussian's
    action dimension); m > 0, a Monte-Carlo estimate from m random projections of that root (Rademacher, drawn from
    the run's generator: unbiased, m backward passes; ACKTR's sampled Fisher), used only where m < head_dim (else
    exact). The exact Fisher still scales the step (beta) and the line search still checks the exact KL."""
    backtrack_ratio: float = 0.8
    """Line-search shrink factor alpha."""
    max_backtracks: int = 10
    """J: line-search candidates are theta_old + alpha^j * beta * x for j = 0..J."""
    holdout_fraction: float = 0.0
    """Diagnostic, any rule: this share of each batch, drawn at random, is kept out of the policy step (g, F, the
    line search, the first-order epochs), and the KL on it is logged (kl_holdout): does the step generalize?"""

    # --- first-order rules: pg, penalty, ppo (update_rules.py); empty fields take the rule's default ---
    policy_lr: float | None = None
    """Adam learning rate of the policy (default 3e-4 for pg, penalty and ppo)."""
    policy_epochs: int | None = None
    """Passes over the batch per update (default: pg 1, penalty 10, ppo 10)."""
    policy_minibatch: int | None = None
    """Samples per Adam step, 0 = the whole batch (default: pg 0, penalty 64, ppo 64)."""
    max_grad_norm: float | None = None
    """Clip the policy gradient's norm to this, 0 = no clipping (default: ppo 0.5, pg and penalty 0)."""
    clip_range: float = 0.2
    """ppo: the clip range epsilon of the clipped surrogate."""
    target_kl: float = 0.0
    """ppo: stop the epochs early once the exact mean KL on the batch exceeds 1.5 * target_kl (0: never)."""
    kl_penalty: KLPenalty = "adaptive"
    """penalty: 'fixed' beta = penalty_coef; 'adaptive' starts at penalty_coef, doubles when KL > 1.5 kl_target
    and halves when KL < kl_target / 1.5 after each update; 'theory': the bound of the TRPO paper's theorem,
    C = 4 eps gamma / (1 - gamma)^2 with eps = max |A| on the batch, on the max KL over states."""
    penalty_coef: float = 1.0
    """penalty: beta for kl_penalty 'fixed', its starting value for 'adaptive'."""
    kl_target: float = 0.01
    """penalty: d_targ of the adaptive beta."""

    # --- value function ---
    value_lr: float = 1e-3
    """Adam learning rate of the critic."""
    value_eps: float = 1e-8
    """Adam epsilon of the critic (torch's default; sb3's on-policy critics use 1e-5, which damps the steps of
    parameters whose gradients are tiny and noisy: it decided Swimmer, see docs/results.md)."""
    value_epochs: int = 10
    """Passes over the batch per update for the critic."""
    value_minibatch: int = 128
    """Critic minibatch size."""

    # --- networks (networks.py, encoders.py) ---
    actor_hidden: tuple[int, ...] = (64, 64)
    """Hidden layer sizes of the policy network (MLP observations)."""
    critic_hidden: tuple[int, ...] = (64, 64)
    """Hidden layer sizes of the value network (MLP observations)."""
    shared_trunk: bool = False
    """One body (MLP or CNN, and the recurrent cell) for the policy and the value function, each with its own head;
    critic_hidden must then equal actor_hidden. The value fit moves the shared body, so after it the trust region
    is checked again: the body's value-fit change is backtracked (backtrack_ratio, max_backtracks) until the exact
    KL(pi_old || pi) (mean, or max with kl_constraint 'max') is at most max_kl and the surrogate is not below
    pi_old's, or undone
    (trust_region.keep_trust_region; docs/scale.md). The next batch is then collected after the value fit, not
    during it."""
    value_kl_coef: float = 1.0
    """shared_trunk: the weight of KL(pi after the policy step || pi) in the value fit's loss, in units of max_kl,
    against the squared error in units of the targets' variance (objectives.shared_value_loss; Phasic Policy
    Gradient's cloning term). 0: the plain squared error. Either way the trust region's check after the fit holds
    the bound; this makes the fit keep more of its change."""
    value_fit_trunk: bool = True
    """shared_trunk: the value fit trains the shared body as well as the value head (steered by value_kl_coef, then
    checked again against the trust region). False: the value head alone, on the body's features computed once per
    update: the body learns from the policy step only, the fit cannot move the policy (nothing to check again), and
    the next batch is collected during the fit. sb3-contrib's answer (its CnnPolicy's shared CNN): cheaper, but the
    value function cannot shape the features."""
    activation: Activation = "tanh"
    """Hidden activation of both MLPs."""
    obs_encoder: ObsEncoding = "auto"
    """How observations are encoded. 'auto': a Box of image shape (2-D, or 3-D with channels first or last, both
    spatial sides >= 8) whose dtype is uint8 or bool is an image (the CNN of image_encoder); any other Box (float
    ones included) is flattened into the MLP. 'cnn': any Box of image shape goes through the CNN. 'mlp': every
    observation is flattened into the MLP."""
    image_encoder: ImageEncoder = "paper"
    """CNN for image observations (a Box of image shape; no observation normalization for them): 'paper', the
    TRPO paper's Atari network (2 conv layers of 16 filters, 20 hidden units), or 'nature', DQN's (3 conv
    layers, 512 hidden units; images of 36x36 or more)."""
    init_log_std: float = 0.0
    """Initial log standard deviation of Gaussian policies."""
    use_sde: bool = False
    """Generalized state-dependent exploration (gSDE, Raffin et al. 2021; rl-zoo's use_sde) for Box actions: a
    sample is mu(s) + z(s) @ (sigma * eps), z the policy's last hidden features and eps a noise matrix per env held
    for sde_sample_freq steps, so exploration is smooth in time; the policy is the diagonal Gaussian of variance
    (z^2) @ sigma^2, sigma = exp(log_std) one entry per (feature, action), initialized at init_log_std."""
    sde_sample_freq: int = -1
    """With use_sde: draw a new exploration matrix every this many steps (-1: once per batch)."""
    recurrent: Recurrent = "none"
    """'lstm' or 'gru': the actor and the critic (shared_trunk: the two, one) each get a recurrent cell of
    recurrent_hidden units after their body (MLP or CNN), its state carried from step to step and reset where an
    episode starts; the update runs on sequences of recurrent_seq_len steps (truncated backpropagation through time
    from the states the rollout had). 'none': feed-forward networks."""
    recurrent_hidden: int = 64
    """Units of the recurrent cell (recurrent 'lstm' or 'gru')."""
    recurrent_seq_len: int = 32
    """Steps per training sequence of a recurrent policy or critic: the batch of each env is cut into chunks of this
    length (the last one padded), gradients flow back through at most this many steps."""

    # --- normalization ---
    normalize_obs: bool = False
    """Running mean/std observation normalization (statistics saved in checkpoints); never for images."""
    obs_norm_update: ObsNormUpdate = "batch"
    """When the observation statistics move: 'batch' merges a batch's observations after it is collected (pi_old
    sees one fixed normalization per batch); 'step' merges each step's observations of all envs before normalizing
    them, as SB3's VecNormalize does (the first batch is then not normalized with the reset observations' tiny
    variance). Either way the batch holds the normalized observations the policy acted on, so pi_old is exact.
    'step' needs every env in one process (vector_mode sync or envpool, or num_workers 1) and single-path sampling."""
    normalize_reward: bool = False
    """Scale rewards by the running std of the discounted return."""
    clip_obs: float = 10.0
    """Clip normalized observations to [-clip_obs, clip_obs]."""
    clip_reward: float = 10.0
    """Clip scaled rewards to [-clip_reward, clip_reward]."""

    # --- infrastructure ---
    device: str = "cpu"
    """Torch device of the networks: 'cpu', 'cuda', 'cuda:1', ..."""
    torch_threads: int = 1
    """torch.set_num_threads for this process (0 leaves torch's default)."""
    checkpoint_every: int = 10
    """Write checkpoints/latest.pt every K policy updates (0: only at the end)."""
    save_every: int = 0
    """Also keep a numbered checkpoint, checkpoints/step_N.pt, each time the run passes a multiple of this many env
    steps (0: none)."""
    keep_checkpoints: int = 0
    """With save_every: keep only the newest K numbered checkpoints (0: all)."""
    eval_episodes: int = 10
    """Deterministic evaluation episodes at the end of `trpo train`, and at each periodic evaluation (eval_every)."""
    eval_every: int = 0
    """Evaluate during training each time the run passes a multiple of this many env steps (0: never): eval_episodes
    deterministic episodes on a separate env, observation statistics frozen, appended to evaluations.jsonl and
    TensorBoard (eval/mean_return); best.pt keeps the agent of the best mean so far, written with the next
    checkpoint (so a killed run's best.pt is never newer than its latest.pt)."""
    eval_max_steps: int = 10_000
    """An evaluation episode (`trpo eval`, the final evaluation of `trpo train`) of an env without a time limit of
    its own ends after this many steps; the evaluation reports how many episodes were cut."""

    def __post_init__(self) -> None:
        # Direct construction meets the same types as CLI and YAML values: no truthy "no", no 2.5 envs.
        hints = _field_types()
        for f in fields(self):
            object.__setattr__(self, f.name, typed(f.name, hints[f.name], getattr(self, f.name), text=False))
        # A first-order rule's empty fields take its defaults: switching a preset's rule (`--update-rule ppo`)
        # gives that rule's own settings. Resolved here, so config.yaml and checkpoints show the values used.
        for name, value in RULE_DEFAULTS.get(self.update_rule, {}).items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)
        validate(self)

    def replace(self, **changes: Any) -> TRPOConfig:
        return dataclasses.replace(self, **changes)

    @property
    def batch_size(self) -> int:
        return self.num_envs * self.steps_per_env

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TRPOConfig:
        return cls(**coerce_fields(values))


def _plain(value: Any) -> Any:
    if isinstance(value, tuple) and value and isinstance(value[0], tuple):  # env_wrappers, as YAML lists them
        return [path if not kwargs else {path: dict(kwargs)} for path, kwargs in value]
    return list(value) if isinstance(value, tuple) else value


# Defaults of the first-order rules: Spinning Up's VPG for pg (one full-batch Adam step per batch); the PPO
# paper's MuJoCo settings for penalty (its adaptive-KL variant) and ppo (Schulman et al. 2017, table 3), with
# SB3's gradient-norm clipping for ppo.
RULE_DEFAULTS: dict[str, dict[str, Any]] = {
    "pg": dict(policy_lr=3e-4, policy_epochs=1, policy_minibatch=0, max_grad_norm=0.0),
    "penalty": dict(policy_lr=3e-4, policy_epochs=10, policy_minibatch=64, max_grad_norm=0.0),
    "ppo": dict(policy_lr=3e-4, policy_epochs=10, policy_minibatch=64, max_grad_norm=0.5),
}

# Fields a resumed run may change: they do not alter the algorithm's math, only where and how it runs.
RESUME_SAFE_FIELDS = ("device", "torch_threads", "checkpoint_every", "save_every", "keep_checkpoints", "eval_episodes",
                      "eval_every", "eval_max_steps", "vector_mode",
                      "num_workers", "ray_address", "max_worker_restarts")
# Keys of a run's config.yaml (and of a YAML config file) that are not TRPOConfig fields.
RUN_RECORD_KEYS = ("env", "seed", "total_steps", "preset", "run_id", "versions")


@functools.cache
def field_docs() -> dict[str, str]:
    """Field name -> its docstring (the string literal under the field), for --help and the config reference (docs).
    Read from this module's source once per process: parsing it takes about 60 ms, and every call of cli.main
    (the tests run hundreds in one process) builds the parser again."""
    import ast

    with open(__file__, encoding="utf-8") as fh:
        tree = ast.parse(fh.read())
    (cls,) = (node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == TRPOConfig.__name__)
    body = cls.body
    docs: dict[str, str] = {}
    for node, nxt in itertools.pairwise(body):
        if isinstance(node, ast.AnnAssign) and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant):
            docs[node.target.id] = " ".join(str(nxt.value.value).split())  # type: ignore[union-attr]
    return docs


def coerce_fields(values: dict[str, Any]) -> dict[str, Any]:
    """Turn YAML / CLI values into the field types, with errors that name the field."""
    hints = _field_types()
    out: dict[str, Any] = {}
    for name, value in values.items():
        if name not in hints:
            raise ConfigError(f"unknown config field {name!r}")
        out[name] = coerce(name, hints[name], value)
    return out


def coerce(name: str, hint: Any, value: Any) -> Any:
    """Convert one value (a string from the CLI or a YAML scalar) to the type of field `name`."""
    return typed(name, hint, value, text=True)


@functools.cache
def _field_types() -> dict[str, Any]:
    """Field name -> its type hint."""
    return get_type_hints(TRPOConfig)


_MOVED_TO_RESOLVE = ("PRESETS", "PRESET_ENVS", "PRESET_STEPS", "VECTOR_PRESET", "is_vector_observation",
                     "load_presets", "load_yaml", "preset_name_for", "resolve_config", "shipped_presets")


def __getattr__(name: str) -> Any:
    """The names that moved to trpo.resolve (config resolution), for old imports (`from trpo.config import
    resolve_config`): forwarded on first use, so importing this module never imports trpo.resolve (which imports it)."""
    if name in _MOVED_TO_RESOLVE:
        return getattr(importlib.import_module("trpo.resolve"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["RESUME_SAFE_FIELDS", "RULE_DEFAULTS", "RUN_RECORD_KEYS", "SEED_MAX", "ConfigError", "TRPOConfig",
           "available_cores", "check_seed", "coerce_fields", "field_docs"]

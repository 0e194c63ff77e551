"""What each key of metrics.jsonl (one row per policy update, and TensorBoard's scalars) means: the one definition
the documentation's metrics reference is generated from (a test fails on a key logged without one). Plain data
that imports nothing: it computes no metric and writes no file (learner.py and evaluation.py make the rows,
logger.py writes them)."""

from __future__ import annotations

METRICS: dict[str, str] = {
    "update": "policy updates so far",
    "step": "env steps so far (vine: the trajectories' and the branches' steps)",
    "episodes": "episodes that ended during this batch",
    "episode_return_mean": "mean raw (unnormalized) return of those episodes; `null` if none ended",
    "episode_length_mean": "mean length of those episodes; `null` if none ended",
    "kl": "exact mean KL(pi_old || pi_new) over the batch's states after the step (0 when the old parameters were "
          "kept); every rule",
    "kl_max": "the max over the batch's states of the same KL: the quantity of the paper's theorem (>= `kl`); every "
              "rule",
    "kl_holdout": "mean KL on the share of the batch held out of the step (`holdout_fraction` > 0 only)",
    "kl_holdout_max": "max KL on the share of the batch held out of the step (`holdout_fraction` > 0 only)",
    "kl_after_value_fit": "`shared_trunk` only: the exact KL(pi_old || pi) (mean, or max with `kl_constraint: max`) "
                          "after the value fit and the trust region's recheck; at most `max_kl` (or the step's own "
                          "KL, for a rule without a line search)",
    "value_fit_trunk_fraction": "`shared_trunk` only: the share alpha^j of the value fit's change of the trunk kept "
                                "(1: all of it; 0: undone, the policy step's parameters exactly, or "
                                "`value_fit_trunk: false`, whose fit never changes the trunk)",
    "value_fit_backtracks": "`shared_trunk` only: backtracks j of the kept (or last tried) share",
    "surrogate_gain": "L(theta_new) - L(theta_old), exact on the batch; every rule",
    "grad_norm": "||g||, the surrogate's gradient at theta_old on the whole batch; every rule",
    "step_accepted": "whether the parameters changed (always true for the first-order rules)",
    "step_status": "trpo/npg: `accepted`, `npg`, `line_search_failed`, `xFx_nonpositive`, `non_finite`, "
                   "`zero_gradient`; pg, penalty, ppo: `first_order`, or `early_stop` (ppo's target KL)",
    "expected_gain": "trpo/npg: g . (step taken), the linear model's prediction; for a rejected step, that of the "
                     "last candidate tried",
    "line_search_steps": "trpo/npg: backtracks j of the accepted (or last tried) candidate",
    "step_fraction": "trpo/npg: alpha^j",
    "cg_iterations": "trpo/npg: conjugate-gradient iterations run (preconditioned with K-FAC for `natural_gradient: "
                     "kfac_cg`; 0 for `kfac`, whose direction takes none)",
    "cg_residual": "trpo/npg: the final residual norm ||g - (F + damping I) x|| (for `natural_gradient: kfac`, "
                   "min over c of ||g - c (F + damping I) x||, x K-FAC's direction and F exact: how far that direction "
                   "is from the natural gradient's, its length being beta's business)",
    "xFx": "trpo/npg: x^T (F + damping I) x",
    "beta": "trpo/npg: sqrt(2 delta / x^T F x), the full step's scale",
    "policy_epochs_run": "pg, penalty, ppo: passes over the batch run (fewer than `policy_epochs` after a ppo early "
                         "stop)",
    "penalty_beta": "penalty: the coefficient of the KL in this update (fixed, adaptive, or the theorem's C)",
    "penalty_epsilon": "penalty with `kl_penalty: theory`: eps = max |A| on the batch, from which C is computed",
    "clip_fraction": "ppo: share of samples whose ratio ended outside [1 - clip_range, 1 + clip_range]",
    "entropy": "mean policy entropy on the batch (before the step)",
    "log_std_mean": "mean log-std of a Gaussian policy (Box actions only; gSDE: of its state-dependent std)",
    "value_loss": "critic MSE on the batch after fitting",
    "explained_variance": "1 - Var(target - V) / Var(target) with V before fitting",
    "advantage_mean": "mean of the advantages before normalization",
    "advantage_std": "std of the advantages before normalization",
    "fps": "env steps per second of this update, end to end",
    "time_rollout": "seconds spent waiting for the batch (with worker processes the next batch is collected during "
                    "the value fit, so only the part that did not overlap)",
    "time_policy": "seconds in the policy step",
    "time_value": "seconds fitting V",
    "worker_restarts": "`vector_mode: ray`: actors replaced during this batch after their process died (their share "
                       "of the batch collected again); 0 in the other modes",
    "vine_states": "`sampling: vine`: rollout states of this batch",
    "vine_branches": "vine: branches of this batch",
    "vine_steps": "vine: branch env steps of this batch (counted in `step`)",
    "vine_q_mean": "vine: mean Q estimate over the branches (scaled rewards, as the critic sees them)",
    "vine_q_spread": "vine: mean over rollout states of the std of Q across a state's branches: how much the action "
                     "choice matters there",
    "vine_ended": "vine: share of branches that ended (terminated, or a time limit) before `vine_horizon` steps",
}

# evaluations.jsonl (eval_every): one row per periodic evaluation; TensorBoard shows them under eval/.
EVALUATION_METRICS: dict[str, str] = {
    "update": "policy updates before this evaluation",
    "step": "env steps before this evaluation",
    "mean_return": "mean return of the deterministic episodes",
    "std_return": "their standard deviation",
    "mean_length": "mean episode length",
    "capped": "episodes cut at `eval_max_steps` (an env without a time limit of its own)",
    "returns": "each episode's return",
    "lengths": "each episode's length",
}

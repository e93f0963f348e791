"""The doctor's test corpus (``examples/doctor``): each script runs as its header declares,
and the corpus itself is consistent (markers, kinds, coverage of the must-not-flag cases).
"""

import ast
import json
import re
import subprocess
import sys
from collections import Counter

import pytest

from tests.doctor.corpus import CORPUS_DIR, EXPECT_EXIT, HELPERS_DIR, KINDS, MARKER, REPO_ROOT, load_corpus

SCRIPTS = load_corpus()

# Legitimate code a naive tool would wrongly accuse: each needs its own clean_<case>.py.
MUST_NOT_FLAG = {
    "argmax_accuracy": "argmax used only for accuracy",
    "item_logging": ".item() / .tolist() for logging",
    "dqn_target_network": ".detach() of a DQN target network synced by copying",
    "ema_teacher_stop_gradient": "BYOL / mean-teacher stop-gradient branch updated by EMA",
    "frozen_backbone": "frozen pretrained backbone (requires_grad=False) + trained head",
    "eval_no_grad": "evaluation under torch.no_grad()",
    "gradient_accumulation": "deliberate gradient accumulation, zeroed every k steps",
    "straight_through_estimator": "y_hard - y_soft.detach() + y_soft",
    "log_softmax_nll": "log_softmax + nll_loss",
    "truncated_bptt": "truncated BPTT with detach() between chunks",
    "gan_bce_with_logits": "GAN: raw logits into BCEWithLogitsLoss, D(fake.detach()), generator backward through D",
    "dcgan_sigmoid_bce": "DCGAN loop: Sigmoid + BCELoss, LeakyReLU(inplace=True), label.fill_, netD.zero_grad()",
    "wgan_weight_clipping": "WGAN critic weights clipped with p.data.clamp_ after each of n_critic steps",
    "wgan_gp": "WGAN-GP interpolates .requires_grad_(True) + autograd.grad(create_graph=True)",
    "actor_critic_two_optimizers": "actor and critic with their own optimizers, advantage.detach() in the actor loss",
    "kfold_cross_validation": "a new model and optimizer built inside every fold",
    "lr_sweep": "learning-rate sweep, a new model and optimizer per trial",
    "teacher_student_distillation": "frozen eval() teacher + kl_div(log_softmax, softmax) distillation",
    "mean_teacher_requires_grad": "EMA teacher with requires_grad=True, run under no_grad, in no optimizer",
    "lbfgs_closure": "LBFGS closure that zeroes, computes the loss and calls backward()",
    "vq_straight_through": "VQ argmin lookup with z + (q - z).detach() and codebook / commitment losses",
    "fgsm_adversarial_training": "x.clone().requires_grad_(True), backward, x_adv.grad.sign(), then zero_grad",
    "numpy_metrics": "NumPy data via torch.from_numpy, metrics from logits.detach().cpu().numpy()",
    "two_optimizers_one_model": "two optimizers partitioning one model's parameters",
    "masked_attention_padding": "-inf padding mask before a softmax that stays finite",
    "safe_where_sqrt": "sqrt in torch.where with the argument clamped inside both branches",
    "mixture_logsumexp_inf": "logsumexp over components some of which are at log-weight -inf",
    "nan_metric_not_in_loss": "a NaN metric under no_grad that never reaches the loss",
    "bf16_autocast": "bfloat16 autocast, finite throughout",
    "nan_to_num_features": "NaN data made 0 by nan_to_num before the model",
    "leaky_relu_negative_bias": "LeakyReLU with a negative bias init (cannot die)",
    "sparse_relu_mlp": "deep Kaiming ReLU MLP with normal sparsity",
    "deep_residual_layernorm": "12 pre-norm residual blocks: no vanishing gradient",
    "deep_cnn_batchnorm": "deep BatchNorm CNN with a tiny learning rate: healthy gradients",
    "clipped_large_gradient": "a large but stable gradient norm, clipped with clip_grad_norm_",
    "eval_then_train_each_epoch": "model.eval() for validation, model.train() before the next epoch",
    "frozen_batchnorm_finetune": "BatchNorm frozen one by one, a frozen backbone in eval under a trained probe",
    "large_scale_regression": "a loss of large scale (1e9) in steady descent",
    "deep_kaiming_relu_sgd": "a deep Kaiming-initialised ReLU MLP trained by fast SGD",
    "pairwise_metric_losses": "pairwise distances and similarities, a per-feature weight: broadcasts on purpose",
    "loss_history_as_numbers": "+= loss.item(), append(loss.detach()), the previous loss kept, micro-batches summed",
    "checkpoint_non_reentrant": "use_reentrant=False on the input, reentrant checkpoints on inputs that require grad",
    "grad_scaler_unscale_then_clip": "scaler.unscale_(optimizer) before clip_grad_norm_; a disabled scaler",
    "gan_zero_grad_orders": "D.zero_grad() between the generator's backward and opt_g.step()",
    "reshape_fallback": "a view that raises on a transposed tensor, caught and retried with reshape",
    "conv_flatten_sized_by_probe": "flatten(1) into a Linear sized by a dummy forward pass, a smaller last batch",
    "batchnorm_batch_statistics": "BatchNorm in train mode: samples interact through the batch statistics on purpose",
    "transformer_batch_first": "TransformerEncoder(batch_first=True) attending over positions, logits view(-1, vocab)",
    "permute_before_seq_first_lstm": "x.transpose(0, 1) before a sequence-first LSTM on DataLoader batches",
    "time_major_gru_attention": "sequence-first GRU on (T, B, D) data with a softmax over dim 0, the time",
    "minibatch_std_discriminator": "a minibatch-stddev feature (h.std(0)) in a GAN discriminator",
}
PLAIN_CLEAN = ["mlp_cross_entropy", "small_cnn", "mse_regression", "embedding", "lr_scheduler"]
MIN_SCRIPTS_PER_KIND = {kind: 2 for kind in KINDS} | {"graph-break": 3, "loss-input": 3}
RAISING_KINDS = {"stale-graph", "inplace-modification", "shape-mismatch"}
MAX_BROKEN_LINES = 60


def _ids(scripts):
    return [script.path.name for script in scripts]


def _broken_kind_prefix(name):
    """``broken_graph_break_vq_argmin`` -> ``graph-break`` (the longest kind that matches)."""
    matches = [kind for kind in KINDS if name.startswith("broken_" + kind.replace("-", "_") + "_")]
    return max(matches, key=len) if matches else None


@pytest.fixture(scope="module")
def plain_runs():
    """Every script run plainly, in one subprocess (``tests/doctor/run_plainly.py``)."""
    result = subprocess.run(
        [sys.executable, "-m", "tests.doctor.run_plainly", *(str(s.path) for s in SCRIPTS)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    runs = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    return {run["path"]: run for run in runs}


@pytest.mark.parametrize("script", SCRIPTS, ids=_ids(SCRIPTS))
def test_script_runs_as_declared(script, plain_runs):
    run = plain_runs[str(script.path)]
    if script.expect_exit is None:
        assert run["exit"] == 0, f"{script.path.name} failed: {run['exception']}"
    else:
        assert run["exit"] != 0, f"{script.path.name} was expected to raise {script.expect_exit!r}"
        assert script.expect_exit in (run["exception"] or ""), (
            f"{script.path.name}: expected {script.expect_exit!r}, got: {run['exception']}"
        )
    assert len(run["stdout"].splitlines()) <= 3, f"{script.path.name} prints too much:\n{run['stdout']}"


def test_corpus_is_consistent():
    problems = []
    kinds_seen = Counter()
    for script in SCRIPTS:
        name = script.path.name
        kinds = {kind for kind, _, _ in script.expected}
        if not (name.startswith("broken_") or name.startswith("clean_")):
            problems.append(f"{name}: name must start with broken_ or clean_")
        for kind, file, line in script.expected:
            if kind not in KINDS:
                problems.append(f"{file}:{line}: unknown kind {kind!r} (known: {', '.join(KINDS)})")
        if script.clean:
            if script.expected:
                problems.append(f"{name}: clean script has markers {script.expected}")
            if script.expect_exit is not None:
                problems.append(f"{name}: clean script declares expect-exit")
            continue
        if not script.expected:
            problems.append(f"{name}: broken script has no '{MARKER}' marker")
        prefix = _broken_kind_prefix(script.path.stem)
        if prefix is None or prefix not in kinds:
            problems.append(f"{name}: file name names kind {prefix!r}, markers declare {sorted(kinds)}")
        else:
            kinds_seen[prefix] += 1
        if (kinds & RAISING_KINDS) and script.expect_exit is None:
            problems.append(f"{name}: {sorted(kinds & RAISING_KINDS)} raises when run; declare '{EXPECT_EXIT}'")
        if script.expect_exit is not None and ": " not in script.expect_exit:
            problems.append(f"{name}: expect-exit must read '<ExceptionType>: <message start>'")
        if len(script.path.read_text().splitlines()) > MAX_BROKEN_LINES:
            problems.append(f"{name}: longer than {MAX_BROKEN_LINES} lines")
    for kind, minimum in MIN_SCRIPTS_PER_KIND.items():
        if kinds_seen[kind] < minimum:
            problems.append(f"kind {kind!r}: {kinds_seen[kind]} broken scripts, need at least {minimum}")
    clean_names = {script.path.stem.removeprefix("clean_") for script in SCRIPTS if script.clean}
    for case in [*MUST_NOT_FLAG, *PLAIN_CLEAN]:
        if case not in clean_names:
            problems.append(f"no examples/doctor/clean_{case}.py ({MUST_NOT_FLAG.get(case, 'plain clean script')})")
    assert not problems, "\n".join(problems)


def test_markers_sit_on_code_lines_and_nothing_else_uses_the_marker_text():
    problems = []
    for path in sorted([*CORPUS_DIR.glob("*.py"), *HELPERS_DIR.glob("*.py")]):
        lines = path.read_text().splitlines()
        own = [(kind, line) for script in SCRIPTS for kind, file, line in script.expected if REPO_ROOT / file == path]
        marker_lines = {line for _, line in own}
        for number, text in enumerate(lines, start=1):
            if MARKER in text and number not in marker_lines:
                problems.append(f"{path.name}:{number}: '{MARKER}' used outside a marker comment")
            if number in marker_lines and text.lstrip().startswith("#"):
                problems.append(f"{path.name}:{number}: a marker must trail the code it points at")
    assert not problems, "\n".join(problems)


def test_every_helper_is_used_and_its_markers_belong_to_a_script():
    imported = {helper for script in SCRIPTS for helper in script.helpers}
    problems = [f"{helper} is imported but does not exist" for helper in imported if not helper.exists()]
    for helper in sorted(HELPERS_DIR.glob("*.py")):
        if helper not in imported:
            problems.append(f"{helper.relative_to(REPO_ROOT)} is imported by no corpus script")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("script", SCRIPTS, ids=_ids(SCRIPTS))
def test_script_header_and_imports(script):
    text = script.path.read_text()
    tree = ast.parse(text)
    assert ast.get_docstring(tree), f"{script.path.name}: first lines must be a docstring"
    assert "torch.manual_seed(0)" in text, f"{script.path.name}: call torch.manual_seed(0)"
    assert "cuda" not in text, f"{script.path.name}: the corpus is CPU only"
    allowed = set(sys.stdlib_module_names) | {"torch", "numpy", "helpers", "__future__"}  # numpy: a dev dependency
    for source in [script.path, *script.helpers]:
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Import):
                roots = [alias.name.split(".")[0] for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                roots = [node.module.split(".")[0]]
            else:
                continue
            assert set(roots) <= allowed, f"{source.name}: imports {roots}; only torch, numpy, stdlib and helpers"


def test_readme_table_lists_exactly_the_scripts():
    readme = (CORPUS_DIR / "README.md").read_text()
    listed = set(re.findall(r"^\| `((?:broken|clean)_\w+\.py)` \|", readme, flags=re.MULTILINE))
    on_disk = {script.path.name for script in SCRIPTS}
    assert listed == on_disk, f"missing from README: {sorted(on_disk - listed)}; stale: {sorted(listed - on_disk)}"

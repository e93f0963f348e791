"""KMeans with scikit-learn's API and semantics (the estimator); the algorithms are in
``_lloyd.py``, ``_minibatch.py`` and ``_gradient.py``, every distance in ``_assign.py``."""

from __future__ import annotations

import sys
import warnings
from typing import Any

import torch
from torch import nn

from gradwise import _validate as v
from gradwise._frames import user_stacklevel
from gradwise.cluster import _assign, _common, _gradient, _init, _lloyd, _minibatch
from gradwise.cluster._distributed import Comm
from gradwise.errors import ArgumentError, ArgumentTypeError

ALGORITHMS = ("lloyd", "minibatch", "gradient")
INITS = ("k-means++", "random")


_PARAMS = (
    "n_clusters",
    "init",
    "n_init",
    "max_iter",
    "tol",
    "algorithm",
    "batch_size",
    "lr",
    "random_state",
    "device",
    "dtype",
    "verbose",
)


class KMeans:
    """k-means clustering with scikit-learn's ``KMeans`` API, on torch tensors.

    ``fit`` minimises the inertia ``sum_i w_i |x_i - c_{a(i)}|^2`` with ``a(i)`` the nearest
    centre (an argmin). The semantics follow scikit-learn where it defines them: ``tol`` is
    relative to the mean variance of the features, ``n_init`` keeps the run of lowest
    inertia, an empty cluster is moved to the point farthest from its centre, and sample
    weights act as repetitions.

    Args:
        n_clusters: number of centres ``K``.
        init: ``"k-means++"`` (greedy, ``2 + log K`` local trials as scikit-learn),
            ``"random"`` (``K`` distinct points drawn by weight), or a ``(K, D)`` tensor.
        n_init: number of runs from different initialisations (only with a string ``init``).
        max_iter: maximum number of iterations (for ``"minibatch"``: passes over the data).
        tol: convergence when the squared centre shift summed over centres falls to
            ``tol * mean(var(X, axis=0))``.
        algorithm: ``"lloyd"`` (exact EM), ``"minibatch"`` (Sculley 2010: per-centre rate
            ``1 / count``, starved centres reassigned), or ``"gradient"`` (autograd through
            :func:`kmeans_loss` and ``torch.optim.SGD`` with per-centre rate ``lr / n_k``:
            with ``lr=1`` and full batches each step is a Newton step, which is Lloyd's update).
        batch_size: batch size of ``"minibatch"`` and ``"gradient"`` (``"gradient"`` uses
            full batches when ``batch_size >= N``).
        lr: for ``"gradient"``, the factor of the per-centre rate ``1 / n_k`` (default 1).
        random_state: seed of every random choice (``None``: a fresh one).
        device: where to compute (default: the device of ``X``); results are on ``X``'s device.
        dtype: floating dtype to compute in (default: that of ``X``, which must be floating).
        verbose: print iteration, inertia and centre shift.

    Attributes:
        cluster_centers_: ``(K, D)``. labels_: ``(N,)``. inertia_: float. n_iter_: int (the
        iterations; for ``"minibatch"``, the passes over the data, at most ``max_iter``).

    Example:
        >>> X = torch.cat([torch.randn(50, 2) - 5, torch.randn(50, 2) + 5])
        >>> km = KMeans(2, random_state=0).fit(X)
        >>> sorted(km.cluster_centers_[:, 0].round().tolist())
        [-5.0, 5.0]
        >>> bool((km.predict(X) == km.labels_).all())
        True
    """

    def __init__(
        self,
        n_clusters: int,
        *,
        init: str | torch.Tensor = "k-means++",
        n_init: int = 1,
        max_iter: int = 300,
        tol: float = 1e-4,
        algorithm: str = "lloyd",
        batch_size: int = 1024,
        lr: float | None = None,
        random_state: int | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        verbose: bool = False,
    ):
        # scikit-learn's contract: the constructor stores its arguments as given (clone, get_params and
        # set_params rely on it); they are checked when they are used (fit, predict, ...)
        self.n_clusters = n_clusters
        self.init = init
        self.n_init = n_init
        self.max_iter = max_iter
        self.tol = tol
        self.algorithm = algorithm
        self.batch_size = batch_size
        self.lr = lr
        self.random_state = random_state
        self.device = device
        self.dtype = dtype
        self.verbose = verbose

    def _check_params(self) -> None:
        """The constructor's arguments (as set by ``__init__`` or ``set_params``), checked."""
        api = "KMeans"
        n_clusters = v.integer(api, "n_clusters", self.n_clusters, low=1)
        init = self.init
        if isinstance(init, str):
            v.choice(api, "init", init, INITS)
        elif not isinstance(init, torch.Tensor):
            raise ArgumentTypeError(
                f"{api}: init must be 'k-means++', 'random' or a (n_clusters, n_features) tensor "
                f"(got {type(init).__name__})"
            )
        elif init.dim() != 2 or init.shape[0] != n_clusters:
            raise ArgumentError(
                f"{api}: init must have shape (n_clusters={n_clusters}, n_features) (got {tuple(init.shape)})"
            )
        v.integer(api, "n_init", self.n_init, low=1)
        v.integer(api, "max_iter", self.max_iter, low=1)
        v.real(api, "tol", self.tol, nonnegative=True)
        v.choice(api, "algorithm", self.algorithm, ALGORITHMS)
        v.integer(api, "batch_size", self.batch_size, low=1)
        if self.lr is not None:
            v.real(api, "lr", self.lr, positive=True)
        if self.random_state is not None:
            v.integer(api, "random_state", self.random_state, low=0)
        self._device()
        dtype = self.dtype
        if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise ArgumentTypeError(f"{api}: dtype must be a floating torch.dtype (got {dtype!r})")
        if not isinstance(self.verbose, bool | int):
            raise ArgumentTypeError(f"KMeans: verbose must be a bool (got {type(self.verbose).__name__})")

    def _device(self) -> torch.device | None:
        if self.device is None:
            return None
        if not isinstance(self.device, str | torch.device):
            raise ArgumentTypeError(
                f"KMeans: device must be a str, a torch.device or None (got {type(self.device).__name__})"
            )
        try:
            return torch.device(self.device)
        except RuntimeError:
            raise ArgumentError(
                f"KMeans: device must name a torch device such as 'cpu' or 'cuda:0' (got {self.device!r})"
            ) from None

    # --- scikit-learn's estimator protocol ------------------------------------------------

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The constructor's arguments, as stored (scikit-learn's ``get_params``)."""
        return {name: getattr(self, name) for name in _PARAMS}

    def set_params(self, **params: Any) -> KMeans:
        """Set constructor arguments (checked when next used, as in scikit-learn); returns ``self``."""
        unknown = sorted(set(params) - set(_PARAMS))
        if unknown:
            raise ArgumentError(
                f"KMeans.set_params: no parameter {', '.join(map(repr, unknown))} (the parameters are "
                f"{', '.join(_PARAMS)})"
            )
        for name, value in params.items():
            setattr(self, name, value)
        return self

    def __sklearn_tags__(self) -> Any:
        """scikit-learn's tags of a clusterer (called only by scikit-learn, which is then installed)."""
        from sklearn.base import BaseEstimator, ClusterMixin

        tags = BaseEstimator.__sklearn_tags__(self)
        tags.estimator_type = ClusterMixin._estimator_type if hasattr(ClusterMixin, "_estimator_type") else "clusterer"
        return tags

    def __repr__(self) -> str:
        args = [repr(self.n_clusters)]
        defaults = KMeans.__init__.__kwdefaults__
        for name, default in defaults.items():
            value = getattr(self, name)
            if isinstance(value, torch.Tensor) or value != default:
                args.append(f"{name}={'<tensor>' if isinstance(value, torch.Tensor) else repr(value)}")
        return f"KMeans({', '.join(args)})"

    # --- fitting ------------------------------------------------------------------------

    def fit(
        self,
        X: Any,
        y: Any = None,
        *,
        sample_weight: Any = None,
        distributed: bool = False,
        timeout: float = 300.0,
    ) -> KMeans:
        """Compute the centres.

        Args:
            X: ``(N, D)`` data (a tensor or anything ``torch.as_tensor`` accepts).
            y: ignored (scikit-learn's signature).
            sample_weight: ``(N,)`` non-negative weights (default: all 1).
            distributed: treat ``X`` as this process's shard of the data: sums, counts and
                the choices of the initialisation are all-reduced over the initialised
                ``torch.distributed`` group, and every process ends with the same centres
                as one process on the concatenated data.
            timeout: seconds to wait for the other processes in any collective before
                raising :class:`~gradwise.cluster.PeerTimeoutError`.

        Returns:
            ``self``.
        """
        api = "KMeans.fit"
        X, home = self._data(api, X)  # the parameters are checked first
        comm = Comm(api, distributed, v.real(api, "timeout", timeout, positive=True))
        n_total = X.shape[0] if comm.world == 1 else comm.offsets(X.shape[0], X.device)[1]
        if n_total == 0:
            raise ArgumentError(f"{api}: X is empty (0 samples); k-means needs at least n_clusters samples")
        if self.n_clusters > n_total:
            raise ArgumentError(f"{api}: n_clusters={self.n_clusters} exceeds the number of samples ({n_total})")
        weights = self._weights(api, sample_weight, X)
        if sample_weight is not None:  # over every process: a shard of zeros is fine, all of them are not
            total = comm.sum(weights.sum(dtype=torch.float64).reshape(1), "summing the weights")
            if not float(total) > 0:
                raise ArgumentError(f"{api}: sample_weight must have a positive entry (got all zeros)")
        if isinstance(self.init, torch.Tensor) and self.init.shape[1] != X.shape[1]:
            raise ArgumentError(f"{api}: init has {self.init.shape[1]} features but X has {X.shape[1]}")
        # scikit-learn's tolerance: relative to the mean variance of the features
        n_local = torch.tensor([float(X.shape[0])], dtype=torch.float64, device=X.device)
        s1 = comm.sum(torch.cat([n_local, _common.column_sums(X)]), "computing the mean")
        mean = s1[1:] / s1[0]
        sq = torch.zeros_like(mean)
        for start, stop in _assign.chunks(X.shape[0], _common.rows_per_pass(X)):
            sq += ((X[start:stop].double() - mean) ** 2).sum(0)
        variances = comm.sum(sq, "computing the variance") / s1[0]
        tol = float(variances.mean()) * self.tol
        shift = mean.to(X.dtype) if _assign.needs_shift(X, mean, float(variances.sum())) else None
        seed = self.random_state if self.random_state is not None else int(torch.randint(2**31, ()).item())
        generator = torch.Generator().manual_seed(seed)

        best = None
        runs = 1 if isinstance(self.init, torch.Tensor) else self.n_init
        if isinstance(self.init, torch.Tensor) and self.n_init > 1:
            warnings.warn(
                f"KMeans.fit: explicit initial centres passed (init is a tensor): performing only one init "
                f"instead of n_init={self.n_init}",
                RuntimeWarning,
                stacklevel=user_stacklevel(),
            )
        for run in range(runs):
            centers = self._initial_centers(api, comm, X, weights, generator, mean.to(X.dtype), seed + run)
            if self.algorithm == "lloyd":
                result = _lloyd.lloyd(
                    comm, X, weights, centers, shift, self.max_iter, tol, self._log(comm), sample_weight is None
                )
            elif self.algorithm == "gradient":
                result = _gradient.gradient(
                    comm,
                    X,
                    weights,
                    centers,
                    shift,
                    self.max_iter,
                    tol,
                    self.batch_size,
                    1.0 if self.lr is None else self.lr,
                    generator,
                    self._log(comm),
                )
            else:
                result = _minibatch.minibatch(
                    comm, X, weights, centers, shift, self.max_iter, tol, self.batch_size, generator, self._log(comm)
                )
            if best is None or result[2] < best[2]:
                best = result
        centers, labels, inertia, n_iter = best
        self.cluster_centers_ = centers.to(home)
        self.labels_ = labels.to(home)
        self.inertia_ = float(inertia)
        self.n_iter_ = int(n_iter)
        self.n_features_in_ = X.shape[1]
        return self

    def fit_predict(self, X: Any, y: Any = None, *, sample_weight: Any = None, **kwargs: Any) -> torch.Tensor:
        """``fit(X)`` then ``labels_``."""
        return self.fit(X, sample_weight=sample_weight, **kwargs).labels_

    def fit_transform(self, X: Any, y: Any = None, *, sample_weight: Any = None, **kwargs: Any) -> torch.Tensor:
        """``fit(X)`` then ``transform(X)``: ``(N, K)`` distances to the centres."""
        return self.fit(X, sample_weight=sample_weight, **kwargs).transform(X)

    def predict(self, X: Any) -> torch.Tensor:
        """Index of the nearest centre of each point: ``(N,)``."""
        X, home = self._fitted_data("KMeans.predict", X)
        labels, _, _, _ = _assign.assign(X, self._centers(X), shift=self._centers(X).mean(0))
        return labels.to(home)

    def transform(self, X: Any) -> torch.Tensor:
        """Euclidean distances to every centre: ``(N, K)`` (materialised: this is the output)."""
        X, home = self._fitted_data("KMeans.transform", X)
        return _assign.distances(X, self._centers(X)).to(home)

    def score(self, X: Any, y: Any = None, *, sample_weight: Any = None) -> float:
        """Negative inertia of ``X`` against the fitted centres."""
        X, _ = self._fitted_data("KMeans.score", X)
        weights = self._weights("KMeans.score", sample_weight, X)
        centers = self._centers(X)
        _, sq_dist, _, _ = _assign.assign(X, centers, shift=centers.mean(0))
        return -float((sq_dist.double() * weights.double()).sum())

    # --- helpers ------------------------------------------------------------------------

    def _data(self, api: str, X: Any) -> tuple[torch.Tensor, torch.device]:
        self._check_params()
        X = _array(api, "X", X)
        home = X.device
        if X.dim() != 2:
            raise ArgumentError(f"{api}: X must be 2-D (n_samples, n_features) (got shape {tuple(X.shape)})")
        if not X.is_floating_point() and self.dtype is None:
            raise ArgumentTypeError(
                f"{api}: X has dtype {X.dtype}; pass dtype=torch.float32 (or float64) to compute in floating point"
            )
        X = X.to(device=self._device() or home, dtype=self.dtype or X.dtype)
        if X.shape[1] == 0:
            raise ArgumentError(f"{api}: X has 0 features")
        if X.numel() and bool(torch.isfinite(X.sum())):  # one reduction; finite values can overflow it
            return X, home
        for start, stop in _assign.chunks(X.shape[0], _common.rows_per_pass(X)):
            finite = torch.isfinite(X[start:stop])
            if not bool(finite.all()):
                row, col = (~finite).nonzero()[0].tolist()
                raise ArgumentError(
                    f"{api}: X must be finite (got {X[start + row, col].item()} at X[{start + row}, {col}])"
                )
        return X, home

    def _fitted_data(self, api: str, X: Any) -> tuple[torch.Tensor, torch.device]:
        if not hasattr(self, "cluster_centers_"):
            raise ArgumentError(f"{api}: this KMeans is not fitted yet; call fit(X) first")
        X, home = self._data(api, X)
        if X.shape[1] != self.n_features_in_:
            raise ArgumentError(
                f"{api}: X has {X.shape[1]} features but the KMeans was fitted on {self.n_features_in_}"
            )
        return X, home

    def _centers(self, X: torch.Tensor) -> torch.Tensor:
        return self.cluster_centers_.to(device=X.device, dtype=X.dtype)

    def _weights(self, api: str, sample_weight: Any, X: torch.Tensor) -> torch.Tensor:
        if sample_weight is None:
            return torch.ones(X.shape[0], dtype=X.dtype, device=X.device)
        w = _array(api, "sample_weight", sample_weight)
        if w.dtype == torch.bool or w.is_complex():
            raise ArgumentTypeError(f"{api}: sample_weight must hold real numbers (got {w.dtype})")
        w = w.to(device=X.device, dtype=X.dtype)
        if w.shape != (X.shape[0],):
            raise ArgumentError(f"{api}: sample_weight must have shape ({X.shape[0]},) (got {tuple(w.shape)})")
        if not bool(torch.isfinite(w).all()) or bool((w < 0).any()):
            raise ArgumentError(f"{api}: sample_weight must be finite and >= 0")
        return w

    def _initial_centers(self, api, comm, X, weights, generator, mean, seed) -> torch.Tensor:
        if isinstance(self.init, torch.Tensor):
            centers = self.init.to(device=X.device, dtype=X.dtype).clone()
            if not bool(torch.isfinite(centers).all()):
                raise ArgumentError(f"{api}: init must be finite")
            return centers
        if self.init == "random":
            return _init.random_rows(api, comm, X, weights, self.n_clusters, seed)
        return _init.kmeans_plusplus(api, comm, X, weights, self.n_clusters, generator, mean)

    def _log(self, comm: Comm):
        if not self.verbose or comm.rank != 0:
            return None

        def log(iteration: int, inertia: float, shift: float) -> None:
            print(f"KMeans: iteration {iteration}, inertia {inertia:.6g}, center shift {shift:.3g}", file=sys.stderr)

        return log


def _array(api: str, name: str, value: Any) -> torch.Tensor:
    """``value`` as a tensor (array-likes converted), or a named error (a str is not an array)."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, str | bytes):
        raise ArgumentTypeError(f"{api}: {name} must be a tensor or array-like of numbers (got a str)")
    try:
        return torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ArgumentTypeError(
            f"{api}: {name} must be a tensor or array-like of numbers (got {type(value).__name__})"
        ) from exc


def kmeans_loss(
    X: torch.Tensor, centers: torch.Tensor, *, sample_weight: torch.Tensor | None = None, reduction: str = "sum"
) -> torch.Tensor:
    """Half the squared distance of each point to its nearest centre (argmin assignment).

    ``0.5 * sum_i w_i |x_i - c_{a(i)}|^2``: the factor 1/2 makes the Hessian w.r.t. centre
    ``k`` equal to ``n_k I``, so the Newton step (rate ``1 / n_k``) is exactly Lloyd's update
    (Bottou and Bengio 1995). The assignment ``a(i)`` is piecewise constant and passes no
    gradient; ``centers`` receive ``n_k c_k - sum_{i in k} w_i x_i``, and ``X`` receives
    ``w_i (x_i - c_{a(i)})`` (a commitment-style gradient pulling points to their centres).
    Computed in chunks: the ``N x K`` distances are never held at once.

    Args:
        X: ``(N, D)`` points.
        centers: ``(K, D)`` centres.
        sample_weight: ``(N,)`` weights (default 1).
        reduction: ``"sum"``, or ``"mean"`` (divided by the total weight).

    Returns:
        A scalar tensor.

    Example:
        >>> X = torch.tensor([[0.0], [2.0], [10.0]])
        >>> c = torch.tensor([[1.0], [9.0]], requires_grad=True)
        >>> loss = kmeans_loss(X, c)
        >>> loss
        tensor(1.5000, grad_fn=<MulBackward0>)
        >>> loss.backward(); c.grad  # n_k c_k - sum x: (2 - 2, 9 - 10)
        tensor([[ 0.],
                [-1.]])
    """
    api = "kmeans_loss"
    X = v.floating_tensor(api, "X", X, min_ndim=2)
    centers = v.floating_tensor(api, "centers", centers, min_ndim=2)
    if X.dim() != 2 or centers.dim() != 2 or X.shape[1] != centers.shape[1]:
        raise ArgumentError(
            f"{api}: X must be (N, D) and centers (K, D) with the same D "
            f"(got X {tuple(X.shape)}, centers {tuple(centers.shape)})"
        )
    v.choice(api, "reduction", reduction, ("sum", "mean"))
    with torch.no_grad():
        labels = _assign.assign(X.detach(), centers.detach(), shift=X.detach().mean(0))[0]
    total = _common.loss_given_labels(X, centers, labels, sample_weight)
    if reduction == "mean":
        total = total / (sample_weight.sum() if sample_weight is not None else X.shape[0])
    return total


def soft_kmeans_assign(X: torch.Tensor, centers: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """Soft assignment ``softmax(-|x - c_k|^2 / tau)`` over the centres (DKM, Cho et al. 2022).

    Differentiable in ``X``, ``centers`` (and a tensor ``tau``); as ``tau -> 0`` it tends
    to the one-hot of the argmin. Materialises ``(N, K)``: it is the output.

    Args:
        X: ``(N, D)``. centers: ``(K, D)``. tau: positive temperature.

    Returns:
        ``(N, K)``, rows summing to 1.

    Example:
        >>> soft_kmeans_assign(torch.tensor([[0.0], [1.0]]), torch.tensor([[0.0], [1.0]]), tau=0.1)
        tensor([[9.9995e-01, 4.5398e-05],
                [4.5398e-05, 9.9995e-01]])
    """
    api = "soft_kmeans_assign"
    X = v.floating_tensor(api, "X", X, min_ndim=2)
    centers = v.floating_tensor(api, "centers", centers, min_ndim=2)
    if X.shape[-1] != centers.shape[-1]:
        raise ArgumentError(
            f"{api}: X and centers must have the same number of features (got {X.shape[-1]} and {centers.shape[-1]})"
        )
    if not isinstance(tau, torch.Tensor):
        tau = v.real(api, "tau", tau, positive=True)
    sq = (X * X).sum(-1, keepdim=True) - 2 * X @ centers.T + (centers * centers).sum(-1)
    return torch.softmax(-sq.clamp_min(0) / tau, -1)


class SoftKMeans(nn.Module):
    """A layer of ``K`` learnable centres with soft assignment (DKM-style clustering layer).

    ``forward(x)`` returns ``(assignments, reconstruction)``: ``soft_kmeans_assign(x, centers,
    tau)`` of shape ``(N, K)`` and its expectation of the centres ``assignments @ centers``.

    Example:
        >>> layer = SoftKMeans(4, 3, tau=0.5)
        >>> weights, recon = layer(torch.randn(8, 3))
        >>> weights.shape, recon.shape
        (torch.Size([8, 4]), torch.Size([8, 3]))
    """

    def __init__(self, n_clusters: int, n_features: int, tau: float = 1.0):
        super().__init__()
        self.n_clusters = v.integer("SoftKMeans", "n_clusters", n_clusters, low=1)
        self.n_features = v.integer("SoftKMeans", "n_features", n_features, low=1)
        self.tau = v.real("SoftKMeans", "tau", tau, positive=True)
        self.centers = nn.Parameter(torch.randn(n_clusters, n_features))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        weights = soft_kmeans_assign(x, self.centers, self.tau)
        return weights, weights @ self.centers

    def extra_repr(self) -> str:
        return f"n_clusters={self.n_clusters}, n_features={self.n_features}, tau={self.tau}"

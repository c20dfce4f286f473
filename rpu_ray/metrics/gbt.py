"""Gradient-boosted trees with exact splits, vectorised in numpy: sklearn's
`GradientBoostingClassifier(random_state=seed)` with its defaults (log loss, learning rate 0.1,
100 stages, depth-3 regression trees, min_samples_split 2, min_samples_leaf 1, subsample 1,
class-prior init), reproduced split for split.

Why: DCI's "exact" mode (disentanglement_lib's classifier) takes 2-8 minutes on 10,000 points
of dSprites-sized factors on 2 shared cores because sklearn grows the 11,300 trees one node at
a time, re-sorting every feature in every node. The K trees of a stage (one per class) are
independent given the stage's residuals, so here they grow together, level by level, all nodes
of a level at once, on features presorted once per fit: 6-7x faster there (rpu_ray/metrics/
dci.py has the measurements), with the same trees.

Reproduced (checked against scikit-learn 1.9.1's `ensemble/_gb.py`, `_loss`, `tree/_splitter.pyx`,
`_partitioner.pyx`, `_criterion.pyx`, `_tree.pyx`, `utils/_sorting.pyx`):
  * Init: raw scores of the class prior (logit for 2 classes, log(p / gmean(p)) for more); per
    stage the negative gradient y_k - softmax(raw)_k (2 classes: y - expit(raw), one tree),
    computed once before the stage's trees.
  * Trees: X as float32; a node is split if it has >= 2 samples, impurity (sq/n - mean^2) above
    float64 eps and depth < max_depth; the split maximises S_l^2/n_l + S_r^2/n_r over all features
    and positions between consecutive sorted node values a < b with b > float32(a + 1e-7)
    (FEATURE_THRESHOLD); threshold a/2 + b/2 in float64, x <= threshold goes left.
  * Leaves: one Newton step, mean(r) [* (K-1)/K for K >= 3] / mean(p (1 - p)) with p = y - r, 0
    if |denominator| < 1e-150; raw += learning_rate * leaf value.
  * feature_importances_: per split n*imp - n_l*imp_l - n_r*imp_r (computed as the
    cancellation-free S_l^2/n_l + S_r^2/n_r - S^2/n), summed over all trees, normalised to 1.
  * Ties. Equal best scores are common (in the first stage every tree's residuals take two
    values, so many partitions score the same). sklearn visits the features of a node in an
    order drawn from the tree's seed (one `randint(0, 2**31 - 1)` per tree from
    RandomState(random_state)), keeps the first strictly better split, and computes S_l as a
    float64 running sum in each feature's sorted order and S_r = S - S_l with S summed in the
    node's sample order left by its parent's last sort and in-place partition. Where the best
    candidates here lie within a tolerance of each other (`_tolerance`), those candidates are
    re-scored exactly that way (splitter RNG, visit order, sample order, float64 sums all
    replicated), so the same split is chosen.

Fast path: split scores n (S_l - n_l S/n)^2 / (n_l n_r) (the proxy minus its node constant) from
int64 prefix sums of the residuals in 2^-(61 - bit_length(n)) fixed point: int64 cumsum is ~8x
faster than float64 in numpy and exact, so every node's sums are exact sums of the quantised
residuals; the tolerance covers the quantisation and sklearn's own float64 rounding.

Known limits of the reproduction: codes with exactly repeated values *and* different residuals
(ties in X, e.g. quantised codes) are sorted stably here but by sklearn's introsort there, so
float64 running sums over tied values, and hence near-tie decisions, can differ (identical rows
are harmless: equal values, equal residuals). numpy's exp must give libm's results on a
negative-stride array (checked at import; otherwise numpy's own exp is used and sklearn's
residuals are matched only to an ulp). max_depth <= 3 (the replay needs a node's depth-first
predecessors decided when the node is searched). Nearly pure nodes (impurity <= 1e-9 here) get
sklearn's own float64 impurity and improvement, bit for bit, since sklearn splits a node whose
rounded impurity exceeds eps and drops a split whose rounded improvement is below -eps.
"""

from __future__ import annotations

import numpy as np
from scipy.special import logit
from scipy.stats import gmean

# sklearn's tree constants: splits are not placed between values closer than this (float32).
FEATURE_THRESHOLD = np.float32(1e-7)
# A node whose impurity is <= this is a leaf; a split whose impurity decrease is below -this
# is dropped.
EPSILON = float(np.finfo(np.float64).eps)
# sklearn's `_safe_divide`: a Newton step with a smaller mean hessian is 0.
_MIN_DENOMINATOR = 1e-150
# Upper bound (exclusive) of the per-tree splitter seeds, and of sklearn's rand_r output + 1.
RAND_R_MAX = 2147483647
_UINT32 = 0xFFFFFFFF
# Nodes whose impurity (computed here) is below this may have sklearn's float64 impurity on
# either side of EPSILON (rounding of sums ~1e-16 * sum(r^2) / n_node): checked exactly.
IMPURITY_CHECK = 1e-9


def _libm_exp_matches() -> bool:
    """Whether np.exp on a reversed (negative-stride) array gives the C library's exp, as
    sklearn's Cython loss computes it. numpy's SIMD exp (contiguous input) differs by an ulp
    for ~5% of inputs; its strided fallback loop calls libm."""
    import math

    x = np.linspace(-40.0, 10.0, 4001)
    return bool(np.array_equal(np.exp(x[::-1])[::-1], [math.exp(v) for v in x.tolist()]))


_REVERSED_EXP_IS_LIBM = _libm_exp_matches()


def _exp(x: np.ndarray) -> np.ndarray:
    """exp as sklearn's loss gets it (libm) where numpy allows, else numpy's."""
    if _REVERSED_EXP_IS_LIBM:  # one 1-D negative-stride pass (2-D views may vectorise)
        flat = np.ascontiguousarray(x).ravel()
        return np.exp(flat[::-1])[::-1].reshape(np.shape(x))
    return np.exp(x)


def _residuals(raw: np.ndarray, onehot: np.ndarray) -> np.ndarray:
    """Negative gradient of the log loss, (K, n), written as sklearn's loss computes it."""
    if raw.shape[0] == 1:  # HalfBinomialLoss: -((1 - y) - y e) / (1 + e), e = exp(-raw)
        y, r = onehot[0], raw[0]
        with np.errstate(over="ignore"):
            e = _exp(-r)
            gradient = np.where(r > -37.0, ((1.0 - y) - y * e) / (1.0 + e), _exp(r) - y)
        return -gradient[None, :]
    # HalfMultinomialLoss: p = exp(raw - max) / (sum over classes, in class order); p - y.
    shifted = _exp(raw - raw.max(axis=0))
    return -(shifted / shifted.sum(axis=0) - onehot)


def _init_raw(counts: np.ndarray, n: int) -> np.ndarray:
    """Raw scores of the class prior (DummyClassifier(strategy="prior") + link), shape (K,)."""
    eps = np.finfo(np.float64).eps
    prior = np.clip(counts / n, eps, 1 - eps)
    if counts.size == 2:
        return np.array([logit(prior[1])])
    return np.log(prior / gmean(prior[None, :], axis=1)[:, None])[0]


def _sequential_sum(values: np.ndarray) -> float:
    """Left-to-right float64 sum starting from 0.0, as sklearn's criterion loops add."""
    return float(np.cumsum(values)[-1]) if values.size else 0.0


def swap_partition_order(is_left: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Order of a node's samples in its children after sklearn's `partition_samples_final`.

    That loop scans a sequence from the front; an element that goes left stays at the front
    pointer, one that goes right is swapped with the last unscanned element, which is examined
    next. So elements are examined alternately in runs from the front (until a right-goer) and
    from the back (until a left-goer); left-goers are placed in examination order, right-goers
    from the end backwards. Returns the indices (into the sequence) of the left child's
    samples in their new order and of the right child's.
    """
    m = is_left.size
    right_at = np.flatnonzero(~is_left)  # j-th right-goer from the front
    left_from_back = np.flatnonzero(is_left)[::-1]  # j-th left-goer from the back
    rounds = min(right_at.size, left_from_back.size)
    complete = int(np.count_nonzero(right_at[:rounds] < left_from_back[:rounds]))
    front_end = right_at[complete - 1] if complete else -1  # last position taken from the front
    back_start = left_from_back[complete - 1] if complete else m  # first taken from the back
    positions = np.arange(m)
    round_ = np.empty(m, dtype=np.intp)
    phase = np.zeros(m, dtype=np.intp)
    key = positions.copy()
    front = positions <= front_end
    round_[front] = np.searchsorted(right_at, positions[front], side="left") + 1
    back = positions >= back_start
    lefts_after = np.cumsum(is_left[::-1])[::-1] - is_left  # left-goers strictly after q
    round_[back] = lefts_after[back] + 1
    phase[back], key[back] = 1, -positions[back]
    middle = ~front & ~back
    round_[middle] = complete + 1
    if complete < right_at.size and right_at[complete] < back_start:
        # The last front run stops at the middle's first right-goer; the back run takes the
        # rest of the middle (all right-goers) from the end.
        tail = middle & (positions > right_at[complete])
        phase[tail], key[tail] = 1, -positions[tail]
    examined = np.lexsort((key, phase, round_))
    goes_left = is_left[examined]
    return examined[goes_left], examined[~goes_left][::-1]


class _SplitterRng:
    """sklearn's per-tree splitter state: rand_r (xorshift) and the Fisher-Yates feature draws
    of `node_split_best` with its constant-feature bookkeeping (state kept across nodes)."""

    def __init__(self, seed: int, num_features: int):
        self.state = int(seed) & _UINT32
        self.features = list(range(num_features))
        self.constant_features = [0] * num_features

    def _rand_int(self, low: int, high: int) -> int:
        state = self.state or 1
        state ^= (state << 13) & _UINT32
        state ^= state >> 17
        state ^= (state << 5) & _UINT32
        self.state = state
        return low + (state % (RAND_R_MAX + 1)) % (high - low)

    def draw(self, is_constant: np.ndarray, n_known: int) -> tuple[list[int], int, int]:
        """One node's draws; returns (features evaluated in order, last sorted feature or -1,
        number of constant features passed to the children)."""
        features, constant = self.features, self.constant_features
        f_i = len(features)
        n_visited = n_found = n_drawn = 0
        n_total = n_known
        visited, last_sorted = [], -1
        while f_i > n_total and (n_visited < len(features)
                                 or n_visited <= n_found + n_drawn):
            n_visited += 1
            f_j = self._rand_int(n_drawn, f_i - n_found)
            if f_j < n_known:
                features[n_drawn], features[f_j] = features[f_j], features[n_drawn]
                n_drawn += 1
                continue
            f_j += n_found
            feature = features[f_j]
            last_sorted = feature  # the samples are re-sorted by every drawn feature
            if is_constant[feature]:
                features[f_j], features[n_total] = features[n_total], features[f_j]
                n_found += 1
                n_total += 1
                continue
            f_i -= 1
            features[f_i], features[f_j] = features[f_j], features[f_i]
            visited.append(feature)
        features[:n_known] = constant[:n_known]
        constant[n_known:n_known + n_found] = features[n_known:n_known + n_found]
        return visited, last_sorted, n_total


class _Stage:
    """What the exact tie resolution of one stage needs: residuals, decisions so far, and a
    lazy replay of each tree's depth-first node order (splitter draws, sample orders)."""

    def __init__(
        self, model: GradientBoostedTrees, residuals: np.ndarray, seeds: list[int],
        num_heap: int,
    ):
        self.model = model
        self.residuals = residuals
        self.seeds = seeds
        k_trees, num_features = residuals.shape[0], model._x32.shape[1]
        # Filled by the search as nodes become known: per (tree, heap node) size, residual sum
        # and sum of squares (size 0: not known yet), and which features are constant.
        self.size = np.zeros((k_trees, num_heap))
        self.total = np.zeros((k_trees, num_heap))
        self.squares = np.zeros((k_trees, num_heap))
        self.constant_known = np.zeros((k_trees, num_heap), dtype=bool)
        self.constant = np.zeros((k_trees, num_heap, num_features), dtype=bool)
        self.decided: dict[tuple[int, int], tuple[int, float] | None] = {}
        self._samples: dict[tuple[int, int], np.ndarray] = {}
        self._rngs: dict[int, _SplitterRng] = {}
        self._visits: dict[tuple[int, int], tuple[list[int], int, int] | None] = {}
        self._stacks: dict[int, list[tuple[int, int, int]]] = {}
        self._pending: dict[int, tuple[int, int, int] | None] = {}
        self._orders: dict[tuple[int, int, int, float], tuple[np.ndarray, np.ndarray]] = {}

    def samples(self, k: int, node: int) -> np.ndarray:
        """Sample ids (ascending) of a node, from the decided splits above it."""
        key = (k, node)
        if key not in self._samples:
            if node == 0:
                self._samples[key] = np.arange(self.residuals.shape[1])
            else:
                parent = (node - 1) // 2
                feature, threshold = self.decided[(k, parent)]
                above = self.samples(k, parent)
                left = self.model._x32[above, feature] <= threshold
                self._samples[key] = above[left] if node == 2 * parent + 1 else above[~left]
        return self._samples[key]

    def approximate_impurity(self, k: int, node: int) -> float:
        """sq/n - mean^2 from sums in sample-index order (what `_grow`'s bincount sums give)."""
        if self.size[k, node] > 0:
            size, total, squares = self.size[k, node], self.total[k, node], self.squares[k, node]
        else:
            r = self.residuals[k, self.samples(k, node)]
            zeros = np.zeros(r.size, dtype=np.intp)
            size, total, squares = r.size, np.bincount(zeros, r)[0], np.bincount(zeros, r * r)[0]
        return squares / size - (total / size) ** 2

    def exact_impurity(self, k: int, node: int) -> float:
        """sklearn's stored impurity of a node, bit for bit: the root's from its criterion
        sums, a child's from its parent's `children_impurity` (see `split_impurities`)."""
        if node == 0:
            y = self.residuals[k, self.samples(k, 0)]
            total, squares = _sequential_sum(y), _sequential_sum(y * y)
            return squares / y.size - (total / y.size) ** 2
        parent = (node - 1) // 2
        _, left, right, _ = self.split_impurities(k, parent, *self.decided[(k, parent)])
        return left if node == 2 * parent + 1 else right

    def splittable(self, k: int, node: int, depth: int, approximate: float) -> bool:
        """sklearn's pre-search leaf test (>= 2 samples, depth, impurity > eps), with the exact
        impurity where rounding could put it on either side of eps (nearly pure nodes)."""
        size = self.size[k, node] if self.size[k, node] > 0 else self.samples(k, node).size
        if depth >= self.model.max_depth or size < 2:
            return False
        if approximate > IMPURITY_CHECK:
            return True
        return self.exact_impurity(k, node) > EPSILON

    def children_orders(
        self, k: int, node: int, feature: int, threshold: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """The children's samples in sklearn's order after splitting the node: its samples
        sorted by its last drawn feature (each drawn feature re-sorts them), then partitioned
        in place (`swap_partition_order`)."""
        key = (k, node, feature, threshold)
        if key not in self._orders:
            _, last_sorted, _ = self.visit(k, node)
            member = np.zeros(self.residuals.shape[1], dtype=bool)
            member[self.samples(k, node)] = True
            in_sorted_order = self.model._order[last_sorted]
            ids = in_sorted_order[member[in_sorted_order]]
            left, right = swap_partition_order(self.model._x32[ids, feature] <= threshold)
            self._orders[key] = (ids[left], ids[right])
        return self._orders[key]

    def node_order(self, k: int, node: int) -> np.ndarray:
        """The node's samples in sklearn's order when its criterion sums them (node_reset)."""
        if node == 0:
            return self.samples(k, 0)
        parent = (node - 1) // 2
        left, right = self.children_orders(k, parent, *self.decided[(k, parent)])
        return left if node == 2 * parent + 1 else right

    def split_impurities(
        self, k: int, node: int, feature: int, threshold: float
    ) -> tuple[float, float, float, float]:
        """sklearn's (node impurity, left impurity, right impurity, impurity improvement) of
        a split, bit for bit: criterion.reset(); update(pos) (forward from the start if
        n_left <= n_right, else back from the end); children_impurity (left squares summed,
        right squares = node squares - left squares); impurity_improvement."""
        y = self.residuals[k, self.node_order(k, node)]
        total, squares = _sequential_sum(y), _sequential_sum(y * y)
        left, right = self.children_orders(k, node, feature, threshold)
        y_left, y_right = self.residuals[k, left], self.residuals[k, right]
        n_left, n_right, n_node = float(left.size), float(right.size), float(y.size)
        if left.size <= right.size:
            sum_left = _sequential_sum(y_left)
        else:
            sum_left = float(np.cumsum(np.concatenate([[total], -y_right[::-1]]))[-1])
        sum_right = total - sum_left
        squares_left = _sequential_sum(y_left * y_left)
        squares_right = squares - squares_left
        impurity_left = squares_left / n_left - (sum_left / n_left) ** 2
        impurity_right = squares_right / n_right - (sum_right / n_right) ** 2
        impurity = self.exact_impurity(k, node)
        improvement = n_node / self.residuals.shape[1] * (
            impurity - n_right / n_node * impurity_right - n_left / n_node * impurity_left)
        return impurity, impurity_left, impurity_right, improvement

    def visit(self, k: int, node: int) -> tuple[list[int], int, int] | None:
        """The node's splitter draws (evaluated features in order, last sorted feature,
        constants passed on), replaying the tree depth-first up to it; None for a leaf."""
        if k not in self._rngs:
            self._rngs[k] = _SplitterRng(self.seeds[k], self.model._x32.shape[1])
            self._stacks[k] = [(0, 0, 0)]
            self._pending[k] = None
        stack = self._stacks[k]
        while (k, node) not in self._visits:
            pending = self._pending[k]
            if pending is not None:
                self._pending[k] = None
                parent, depth, n_constant = pending
                if depth + 1 < self.model.max_depth and self.decided[(k, parent)] is not None:
                    stack.append((2 * parent + 2, depth + 1, n_constant))
                    stack.append((2 * parent + 1, depth + 1, n_constant))
                continue
            current, depth, n_known = stack.pop()
            if not self.splittable(k, current, depth, self.approximate_impurity(k, current)):
                self._visits[(k, current)] = None
                continue
            if self.constant_known[k, current]:
                is_constant = self.constant[k, current]
            else:
                x = self.model._xt[:, self.samples(k, current)]
                is_constant = x.max(axis=1) <= x.min(axis=1) + FEATURE_THRESHOLD
            drawn = self._rngs[k].draw(is_constant, n_known)
            self._visits[(k, current)] = drawn
            self._pending[k] = (current, depth, drawn[2])
        return self._visits[(k, node)]


class GradientBoostedTrees:
    """sklearn's GradientBoostingClassifier algorithm, vectorised (see the module docstring).

    Attributes after `fit`:
      classes_: sorted class labels.
      feature_importances_: (num_features,) summing to 1 (all zero if no tree split).
      train_raw_: (n, K) raw scores of the training points (K = 1 for 2 classes).
      trees_: (features, thresholds, values), each (n_stages, K, 2^(max_depth+1) - 1) in heap
        order (children of node h are 2h+1, 2h+2); feature -1 marks a leaf.
      tie_nodes_: number of nodes decided by the exact tie resolution (diagnostic).
    """

    def __init__(
        self, n_stages: int = 100, learning_rate: float = 0.1, max_depth: int = 3,
        random_state: int = 0,
    ):
        if not 1 <= max_depth <= 3:
            raise ValueError(f"max_depth must be 1, 2 or 3, got {max_depth}")
        self.n_stages = n_stages
        self.learning_rate = learning_rate
        self.max_depth = max_depth
        self.random_state = random_state

    # --- fitting ----------------------------------------------------------------------------

    def fit(self, x: np.ndarray, y: np.ndarray) -> GradientBoostedTrees:
        """Fits the model on x (n, num_features) and labels y (n,), at least 2 classes."""
        x32 = np.ascontiguousarray(x, dtype=np.float32)
        n, num_features = x32.shape
        self.classes_, encoded = np.unique(np.asarray(y), return_inverse=True)
        num_classes = self.classes_.size
        if num_classes < 2:
            raise ValueError("y needs at least 2 classes")
        counts = np.bincount(encoded, minlength=num_classes)
        k_trees = 1 if num_classes == 2 else num_classes
        onehot = (encoded[None, :] == np.arange(num_classes)[:, None]).astype(np.float64)
        if k_trees == 1:
            onehot = onehot[1:]
        self._newton_factor = 1.0 if k_trees == 1 else (num_classes - 1) / num_classes
        self.init_raw_ = _init_raw(counts, n)
        raw = np.repeat(self.init_raw_[:, None], n, axis=1)  # (K, n)

        self._prepare(x32, k_trees)
        num_heap = 2 ** (self.max_depth + 1) - 1
        shape = (self.n_stages, k_trees, num_heap)
        features = np.full(shape, -1, dtype=np.int64)
        thresholds = np.full(shape, np.inf)
        values = np.zeros(shape)
        gains = np.zeros(num_features)
        self.tie_nodes_ = 0
        # The estimator's RandomState gives each tree's splitter one seed, in fitting order.
        rng = np.random.RandomState(self.random_state)
        for stage in range(self.n_stages):
            residuals = _residuals(raw, onehot)
            seeds = [int(rng.randint(0, RAND_R_MAX)) for _ in range(k_trees)]
            context = _Stage(self, residuals, seeds, num_heap)
            heap = self._grow(context, features[stage], thresholds[stage], gains)
            values[stage] = self._leaf_values(residuals, onehot, heap, num_heap)
            raw += self.learning_rate * np.take_along_axis(values[stage], heap, axis=1)
        self.trees_ = (features, thresholds, values)
        total = gains.sum()
        self.feature_importances_ = gains / total if total > 0 else gains
        self.train_raw_ = raw.T
        del self._x32, self._order, self._sorted, self._reach, self._root_valid
        del self._x_row, self._xt, self._in_order, self._values, self._score
        del self._root_weight
        return self

    def _prepare(self, x32: np.ndarray, k_trees: int) -> None:
        """Per-fit constants: presorted features, the FEATURE_THRESHOLD rule, buffers."""
        n, num_features = x32.shape
        self._x32 = x32
        xt = np.ascontiguousarray(x32.T)
        self._xt = xt
        self._order = np.argsort(xt, axis=1, kind="stable")
        self._sorted = np.take_along_axis(xt, self._order, axis=1)  # (F, n) float32
        # reach[f, g]: last sorted position whose value is <= float32(value at g + 1e-7). A split
        # after position g is allowed iff the node's next value lies beyond it.
        limit = self._sorted + FEATURE_THRESHOLD
        self._reach = np.stack([np.searchsorted(self._sorted[f], limit[f], side="right") - 1
                                for f in range(num_features)])
        positions = np.arange(n)
        self._root_valid = (self._reach == positions) & (positions < n - 1)
        self._x_row = np.arange(n)[None, :] * num_features  # flat index of x32[i, 0]
        # Trees are searched in chunks of ~2^19 (tree, feature, position) cells.
        self._chunk = max(1, min(k_trees, (1 << 19) // (num_features * n)))
        # Every tree's residuals in each feature's sorted order, per stage: (K, F, n).
        self._in_order = np.empty((k_trees, num_features, n), dtype=np.int64)
        # Reused per chunk (fresh multi-MB arrays cost page faults on every call).
        self._values = np.empty((self._chunk, num_features, n), dtype=np.int64)
        self._score = np.empty((self._chunk, num_features, n))
        # Fixed point: |residual| <= 1, so every prefix sum, and a segment's first element minus
        # the previous segment's sum, stays below 2^62 in int64.
        self._quantum = 2.0 ** -(61 - int(n).bit_length())
        # Root: weight sqrt(n / (n_l n_r)) * quantum, 0 where no split is allowed.
        n_left = np.arange(1, n + 1, dtype=np.float64)
        with np.errstate(divide="ignore"):
            weight = np.sqrt(n / (n_left * (n - n_left))) * self._quantum
        self._root_weight = np.where(self._root_valid, weight, 0.0)  # (F, n)

    def _tolerance(self, size: np.ndarray, squares: np.ndarray) -> np.ndarray:
        """Score margin within which candidates are re-scored exactly, per node (size n,
        squares s = sum(r^2)): 4 n q covers the fixed point (|d score / d S_l| <= 4 max|r| <= 4,
        |S_l error| <= n q / 2); sklearn's float64 proxy is off by a few ulp of s (1e-9 s) plus
        its running sums' error, at most ~n eps sum|r| <= n eps sqrt(n s) per sum times 4."""
        return (4.0 * size * self._quantum + 1e-9 * squares
                + 1e-15 * size * np.sqrt(size * squares) + 1e-300)

    def _grow(
        self, context: _Stage, features: np.ndarray, thresholds: np.ndarray, gains: np.ndarray,
    ) -> np.ndarray:
        """Grows the K trees of one stage; fills features/thresholds (K, heap), adds the
        importance gains, returns each sample's leaf (K, n) as a heap index."""
        residuals = context.residuals
        k_trees, n = residuals.shape
        num_heap = features.shape[1]
        tree_base = np.arange(k_trees)[:, None] * num_heap
        fixed = np.rint(residuals / self._quantum).astype(np.int64)
        heap = np.zeros((k_trees, n), dtype=np.intp)
        size, total, squares = context.size, context.total, context.squares
        root = self._node_stats(tree_base + heap, residuals, k_trees, num_heap)
        for stat, values in zip((size, total, squares), root, strict=True):
            stat[:, 0] = values[:, 0]
        for depth in range(self.max_depth):
            first = 2**depth - 1
            level = slice(first, 2 * first + 1)
            with np.errstate(divide="ignore", invalid="ignore"):
                mean = total[:, level] / size[:, level]
                impurity = squares[:, level] / size[:, level] - mean**2
            splittable = (size[:, level] >= 2) & (impurity > EPSILON)
            # Nearly pure nodes: sklearn's own float64 impurity decides (it may split them).
            for k, j in zip(*np.nonzero((size[:, level] >= 2) & ~(impurity > IMPURITY_CHECK)),
                            strict=True):
                splittable[k, j] = context.splittable(int(k), first + int(j), depth,
                                                      float(impurity[k, j]))
            if not splittable.any():
                break
            tolerance = self._tolerance(size[:, level], squares[:, level])
            # Trees in chunks: ~4 MB temporaries stay in cache and in malloc's heap (32 MB ones
            # would be mmapped and page-faulted afresh on every call).
            parts = []
            if depth > 0:
                geometry = self._level_geometry(heap, first, splittable)
            for low in range(0, k_trees, self._chunk):
                high = min(low + self._chunk, k_trees)
                in_order = self._in_order[low:high]
                if depth == 0:  # the chunk's residuals in each feature's sorted order
                    for k in range(low, high):
                        np.take(fixed[k], self._order, out=self._in_order[k])
                if not splittable[low:high].any():
                    continue
                if depth == 0:
                    search = self._scores_root(in_order, splittable[low:high, 0])
                else:
                    search = self._scores_level(in_order, geometry, low, first)
                part = self._decide(context, search, low, first, tolerance[low:high],
                                    squares[low:high, level])
                if part is not None:
                    parts.append(part)
            best = tuple(np.concatenate(v) for v in zip(*parts, strict=True)) if parts else None
            if best is None:
                break
            tree, node, feature, threshold = best
            # Partition the samples of the split nodes: x <= threshold goes left.
            split_feature = np.full(k_trees * num_heap, -1)
            split_threshold = np.full(k_trees * num_heap, np.inf)
            split_feature[tree * num_heap + node] = feature
            split_threshold[tree * num_heap + node] = threshold
            flat_heap = tree_base + heap
            sample_feature = split_feature.take(flat_heap)
            x_value = self._x32.ravel().take(self._x_row + np.maximum(sample_feature, 0))
            right = x_value > split_threshold.take(flat_heap)
            heap = np.where(sample_feature >= 0, 2 * heap + 1 + right, heap)
            c_size, c_total, c_squares = self._node_stats(tree_base + heap, residuals, k_trees,
                                                          num_heap)
            left, right_node = 2 * node + 1, 2 * node + 2
            n_left, n_right = c_size[tree, left], c_size[tree, right_node]
            s_left, s_right = c_total[tree, left], c_total[tree, right_node]
            features[tree, node] = feature
            thresholds[tree, node] = threshold
            gain = (s_left**2 / n_left + s_right**2 / n_right
                    - (s_left + s_right) ** 2 / (n_left + n_right))
            np.add.at(gains, feature, gain)
            for stat, c_stat in ((size, c_size), (total, c_total), (squares, c_squares)):
                stat[tree, left] = c_stat[tree, left]
                stat[tree, right_node] = c_stat[tree, right_node]
        return heap

    @staticmethod
    def _node_stats(
        flat: np.ndarray, residuals: np.ndarray, k_trees: int, num_heap: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Size, residual sum and residual sum of squares per (tree, heap node)."""
        length = k_trees * num_heap
        flat = flat.ravel()
        size = np.bincount(flat, minlength=length).reshape(k_trees, num_heap).astype(np.float64)
        total = np.bincount(flat, residuals.ravel(), minlength=length).reshape(k_trees, num_heap)
        squares = np.bincount(flat, (residuals * residuals).ravel(), minlength=length).reshape(
            k_trees, num_heap)
        return size, total, squares

    def _threshold(self, feature: int, position: int, following: int) -> float:
        """sklearn's threshold between two sorted float32 values: a/2 + b/2 in float64."""
        a = float(self._sorted[feature, position])
        b = float(self._sorted[feature, following])
        return a / 2.0 + b / 2.0

    def _scores_root(self, in_order: np.ndarray, splittable: np.ndarray) -> dict:
        """Split scores of every tree's root over every feature's global sorted order."""
        k_trees, num_features, n = in_order.shape
        cumulative = np.cumsum(in_order, axis=-1, out=self._values[:k_trees])  # exact int sums
        mean = cumulative[:, 0, -1] / n  # (K,) in fixed-point units
        # score = n (S_l - n_l mean)^2 / (n_l n_r) in real units, 0 where no split is allowed.
        n_left = np.arange(1, n + 1, dtype=np.float64)
        score = np.subtract(cumulative, (mean[:, None] * n_left)[:, None, :],
                            out=self._score[:k_trees])
        score *= self._root_weight[None]
        np.square(score, out=score)
        trees = np.flatnonzero(splittable)
        segment_of = np.full((k_trees, n), -1)
        segment_of[trees] = np.arange(trees.size)[:, None]
        return {
            "score": score, "layout": None, "tree": trees, "node": np.zeros_like(trees),
            "start": np.zeros_like(trees), "stop": np.full_like(trees, n),
            "segment_max": score.max(axis=2)[trees], "segment_of": segment_of,
            "constant": np.broadcast_to(self._sorted[:, -1] <= self._sorted[:, 0]
                                        + FEATURE_THRESHOLD, (trees.size, num_features)),
        }

    def _level_geometry(self, heap: np.ndarray, first: int, splittable: np.ndarray) -> dict:
        """Node segments of one depth for all trees (first = heap index of its first node):
        each sample's key (its node's index within the depth, or num_nodes if not searched),
        segment sizes and starts, and per (tree, position in a segment-sorted row) the node
        size, n_left and score weight sqrt(n / (n_l n_r)) * quantum (0 where no split is
        allowed: a segment's last element, or the not-searched segment)."""
        k_trees, n = heap.shape
        num_nodes = splittable.shape[1]
        num_keys = num_nodes + 1
        # Key of every heap node (nodes of other depths, and unsearched ones: num_nodes).
        num_heap = 2 ** (self.max_depth + 1) - 1
        table = np.full((k_trees, num_heap), num_nodes, dtype=np.uint8)
        table[:, first:first + num_nodes] = np.where(splittable, np.arange(num_nodes), num_nodes)
        key = table.ravel().take(heap + np.arange(k_trees)[:, None] * num_heap)
        flat_counts = np.bincount((np.arange(k_trees)[:, None] * num_keys + key).ravel(),
                                  minlength=k_trees * num_keys)
        counts = flat_counts.reshape(k_trees, num_keys)
        starts = np.cumsum(counts, axis=1) - counts
        segment = np.repeat(np.tile(np.arange(num_keys), k_trees), flat_counts).reshape(k_trees, n)
        node_size = np.repeat(flat_counts.astype(np.float64), flat_counts).reshape(k_trees, n)
        n_left = (np.arange(1.0, n + 1.0)[None, :]
                  - np.repeat(starts.ravel().astype(np.float64), flat_counts).reshape(k_trees, n))
        n_right = node_size - n_left
        with np.errstate(divide="ignore", invalid="ignore"):
            weight = np.sqrt(node_size / (n_left * n_right))
        weight *= self._quantum
        weight[(n_right == 0) | (segment == num_nodes)] = 0.0
        index = np.full(k_trees * num_keys, -1)
        searched = np.flatnonzero((counts > 0) & (np.arange(num_keys) < num_nodes))
        index[searched] = np.arange(searched.size)
        return {"key": key, "counts": counts, "starts": starts, "segment": segment,
                "n_left": n_left, "weight": weight, "num_nodes": num_nodes,
                "segment_of": np.repeat(index, flat_counts).reshape(k_trees, n)}

    def _scores_level(self, in_order: np.ndarray, geometry: dict, low: int, first: int) -> dict:
        """Split scores of the searched nodes of one depth in trees low.. (in_order: their
        residuals in each feature's sorted order). Every (tree, feature) row is stably sorted
        by node, so each node's samples form a contiguous segment in that feature's order;
        prefix sums restart at segment starts."""
        k_trees, num_features, n = in_order.shape
        part = slice(low, low + k_trees)
        counts, starts = geometry["counts"][part], geometry["starts"][part]
        segment = geometry["segment"][part]
        num_nodes = geometry["num_nodes"]
        # Layout: positions (into the sorted order) grouped by node, sorted within each node;
        # kept as flat indices into (K, F, n).
        keys = np.empty((k_trees, num_features, n), dtype=np.uint8)
        for k, key in enumerate(geometry["key"][part]):  # per tree: the (F, n) index stays cached
            np.take(key, self._order, out=keys[k])
        layout = np.argsort(keys, axis=-1, kind="stable")
        layout += (np.arange(k_trees * num_features) * n).reshape(k_trees, num_features, 1)
        values = np.take(in_order.ravel(), layout, out=self._values[:k_trees])  # (K, F, n)
        # Segment sums (exact in int64; the same in every feature's row), then make the row's
        # prefix sums restart at each segment: subtracting the previous segment's sum from a
        # segment's first element telescopes to subtracting everything before the segment.
        prefix = np.zeros((k_trees, n + 1), dtype=np.int64)
        np.cumsum(values[:, 0, :], axis=1, out=prefix[:, 1:])
        segment_sum = (np.take_along_axis(prefix, starts + counts, axis=1)
                       - np.take_along_axis(prefix, starts, axis=1))
        nonempty_k, nonempty_j = np.nonzero(counts > 0)
        later = starts[nonempty_k, nonempty_j] > 0  # a previous segment of the same tree exists
        previous_sum = np.roll(segment_sum[nonempty_k, nonempty_j], 1)
        values[nonempty_k[later], :, starts[nonempty_k, nonempty_j][later]] -= \
            previous_sum[later][:, None]
        np.cumsum(values, axis=-1, out=values)
        mean = np.where(counts > 0, segment_sum / np.maximum(counts, 1), 0.0)
        weight = geometry["weight"][part]
        offset = geometry["n_left"][part] * np.take_along_axis(mean, segment, axis=1) * weight
        score = np.multiply(values, weight[:, None, :], out=self._score[:k_trees])
        score -= offset[:, None, :]
        np.square(score, out=score)
        # Best per (node, feature) over the node's segment. reduceat's last segment of a row
        # runs into the not-searched segment (score 0) or, for the last row, the array end; a
        # segment's last element scores 0 too, so the maxima are unaffected.
        tree, local_node = np.nonzero(counts[:, :num_nodes] > 0)
        seg_starts = ((tree[:, None] * num_features + np.arange(num_features)) * n
                      + starts[tree, local_node][:, None])  # (P, F)
        order = np.argsort(seg_starts, axis=None)
        segment_max = np.empty(seg_starts.size)
        segment_max[order] = np.maximum.reduceat(score.ravel(), seg_starts.ravel()[order])
        # A feature is constant in a node if its largest value is within FEATURE_THRESHOLD of
        # its smallest: the ends of the node's segment.
        row_start = seg_starts - starts[tree, local_node][:, None]
        lowest = layout.ravel()[seg_starts] - row_start
        highest = layout.ravel()[seg_starts + counts[tree, local_node][:, None] - 1] - row_start
        features = np.arange(num_features)
        constant = (self._sorted[features, highest]
                    <= self._sorted[features, lowest] + FEATURE_THRESHOLD)
        return {
            "score": score, "layout": layout, "tree": tree, "node": first + local_node,
            "start": starts[tree, local_node], "stop": starts[tree, local_node]
            + counts[tree, local_node], "segment_max": segment_max.reshape(seg_starts.shape),
            "segment_of": self._chunk_index(geometry, low, k_trees), "constant": constant,
        }

    @staticmethod
    def _chunk_index(geometry: dict, low: int, k_trees: int) -> np.ndarray:
        """Per (tree, position) of trees low..: the index of its node among the chunk's
        searched nodes (geometry numbers them over all trees, row-major), -1 if none."""
        num_nodes = geometry["num_nodes"]
        before = np.count_nonzero(geometry["counts"][:low, :num_nodes] > 0)
        index = geometry["segment_of"][low:low + k_trees]
        return np.where(index >= 0, index - before, -1)

    def _decide(
        self, context: _Stage, search: dict, low: int, first: int, tolerance: np.ndarray,
        squares: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
        """Splits of the searched nodes of one depth in trees low.. (the search's trees are
        numbered from 0): (tree, heap node, feature, threshold).

        Fast path, all nodes at once: a node whose best score beats every other candidate (any
        feature, any position) by more than the tolerance, between values further apart than
        FEATURE_THRESHOLD. The rest, one by one in depth-first order, through `_choose`.
        """
        score, layout = search["score"], search["layout"]
        tree, node, start, stop = search["tree"], search["node"], search["start"], search["stop"]
        _, num_features, n = score.shape
        if tree.size == 0:
            return None
        segment_max = search["segment_max"]
        context.constant[low + tree, node] = search["constant"]
        context.constant_known[low + tree, node] = True
        top = segment_max.max(axis=1)
        local = node - first
        node_tolerance, node_squares = tolerance[tree, local], squares[tree, local]
        # Candidates within the tolerance of their node's best: usually one per node.
        segment_of = search["segment_of"]
        threshold_at = np.where(segment_of >= 0, (top - node_tolerance)[segment_of], np.inf)
        near = np.flatnonzero(score >= threshold_at[:, None, :])
        near_tree, near_rest = np.divmod(near, num_features * n)
        near_feature, near_position = np.divmod(near_rest, n)
        near_node = segment_of[near_tree, near_position]
        hits = np.bincount(near_node, minlength=tree.size)
        single = np.flatnonzero(hits[near_node] == 1)
        fast = np.zeros(tree.size, dtype=bool)
        fast_feature = np.zeros(tree.size, dtype=np.intp)
        fast_position = np.zeros(tree.size, dtype=np.intp)
        fast[near_node[single]] = True
        fast_feature[near_node[single]] = near_feature[single]
        fast_position[near_node[single]] = near_position[single]
        fast &= top > 1e-9 * node_squares
        # Sorted positions split between (here, following); at the root the layout is the
        # global sorted order itself. A fast node's best position is never a segment's last.
        if layout is None:
            here = fast_position
        else:
            row_start = (tree * num_features + fast_feature) * n
            here = layout.ravel()[row_start + fast_position] - row_start
        following = np.full_like(here, n - 1)
        if layout is None:
            following[fast] = here[fast] + 1
        else:
            following[fast] = layout.ravel()[row_start[fast] + fast_position[fast] + 1] \
                - row_start[fast]
        fast &= following > self._reach[fast_feature, here]
        chosen_feature = np.where(fast, fast_feature, -1)
        a = self._sorted[fast_feature, here].astype(np.float64)
        b = self._sorted[fast_feature, following].astype(np.float64)
        chosen_threshold = a / 2.0 + b / 2.0
        for i in np.flatnonzero(fast):
            context.decided[(low + int(tree[i]), int(node[i]))] = (int(chosen_feature[i]),
                                                                   float(chosen_threshold[i]))
        # The others in depth-first order (a tree's nodes of one depth: increasing heap index).
        for i in np.flatnonzero(~fast):
            k = int(tree[i])
            if layout is None:
                rows = np.broadcast_to(np.arange(n), (num_features, n))
            else:
                rows = layout[k] - (k * num_features + np.arange(num_features))[:, None] * n
            chosen = self._choose(context, low + k, int(node[i]), score[k], segment_max[i],
                                  rows, int(start[i]), int(stop[i]), float(node_tolerance[i]),
                                  float(node_squares[i]))
            context.decided[(low + k, int(node[i]))] = chosen
            if chosen is not None:
                chosen_feature[i], chosen_threshold[i] = chosen
        split = chosen_feature >= 0
        if not split.any():
            return None
        return low + tree[split], node[split], chosen_feature[split], chosen_threshold[split]

    def _choose(
        self, context: _Stage, k: int, node: int, score: np.ndarray, feature_best: np.ndarray,
        layout: np.ndarray, start: int, stop: int, tolerance: float, squares: float,
    ) -> tuple[int, float] | None:
        """One node's split (feature, threshold), or None if it stays a leaf.

        score (F, n) and layout (F, n) are the tree's rows; the node is [start, stop). Fast path:
        a single candidate beats all others by more than the tolerance. Otherwise, and for
        nodes whose best decrease is tiny (sklearn's rounding decides whether and where such
        a node splits), `_resolve` re-scores the candidates as sklearn does.
        """
        while True:
            top = float(feature_best.max())
            if top <= 1e-9 * squares:
                break
            near = np.flatnonzero(feature_best >= top - tolerance)
            if near.size > 1:
                break
            feature = int(near[0])
            positions = np.flatnonzero(score[feature, start:stop] >= top - tolerance)
            if positions.size > 1:
                break
            position = start + int(positions[0])
            here, following = layout[feature, position], layout[feature, position + 1]
            if following > self._reach[feature, here]:
                return feature, self._threshold(feature, here, following)
            # The best candidate splits values closer than FEATURE_THRESHOLD: drop such
            # candidates (sklearn never evaluates them) and choose again.
            self._mask_close(score, layout, start, stop)
            feature_best = score[:, start:stop].max(axis=1)
        self._mask_close(score, layout, start, stop)
        self.tie_nodes_ += 1
        return self._resolve(context, k, node, score, layout, start, stop, tolerance, squares)

    def _mask_close(self, score: np.ndarray, layout: np.ndarray, start: int, stop: int) -> None:
        """Zeroes one node's candidates that split values closer than FEATURE_THRESHOLD
        (sklearn never evaluates them)."""
        here = layout[:, start:stop - 1]
        following = layout[:, start + 1:stop]
        close = following <= np.take_along_axis(self._reach, here, axis=1)
        score[:, start:stop - 1][close] = 0.0

    def _resolve(
        self, context: _Stage, k: int, node: int, score: np.ndarray, layout: np.ndarray,
        start: int, stop: int, tolerance: float, squares: float,
    ) -> tuple[int, float] | None:
        """sklearn's choice among near-tied candidates: its float64 proxies S_l^2/n_l +
        S_r^2/n_r (running sums as its criterion updates them), the best first in its feature
        visit order, then first position; then its impurity-improvement test if the decrease
        is tiny. A node whose every score is 0 here (all residuals equal) still splits in
        sklearn at its best-by-rounding candidate, so then every valid position competes."""
        block = score[:, start:stop]
        top = float(block.max())
        if top > 0.0:
            candidate_f, candidate_p = np.nonzero(block >= top - tolerance)
        else:
            candidate_f, candidate_p = np.nonzero(np.ones(block.shape, dtype=bool))
        visited, _, _ = context.visit(k, node)
        rank = {feature: i for i, feature in enumerate(visited)}
        m = stop - start
        residuals = context.residuals[k]
        total = _sequential_sum(residuals[context.node_order(k, node)])
        best_key: tuple[float, int, int] | None = None
        chosen = None
        for feature in np.unique(candidate_f):
            feature = int(feature)
            sorted_positions = layout[feature, start:stop]
            x = self._sorted[feature, sorted_positions]
            valid = np.flatnonzero(x[1:] > x[:-1] + FEATURE_THRESHOLD) + 1  # n_left values
            n_left = candidate_p[candidate_f == feature] + 1
            at = np.searchsorted(valid, n_left)
            is_valid = at < valid.size
            is_valid[is_valid] = valid[at[is_valid]] == n_left[is_valid]
            if not is_valid.any():
                continue
            n_left, at = n_left[is_valid], at[is_valid]
            y = residuals[self._order[feature, sorted_positions]]
            s_left = self._running_sums(y, valid, total)[at]
            s_right = total - s_left
            n_l = n_left.astype(np.float64)
            proxy = s_left * s_left / n_l + s_right * s_right / (m - n_l)
            i = int(np.argmax(proxy))  # first position among equal proxies
            key = (-float(proxy[i]), rank[feature], int(n_left[i]))
            if best_key is None or key < best_key:
                best_key = key
                chosen = (feature, start + int(n_left[i]) - 1)
        if chosen is None:
            return None
        feature, position = chosen
        here, following = layout[feature, position], layout[feature, position + 1]
        threshold = self._threshold(feature, here, following)
        if top <= 1e-9 * squares + 4.0 * tolerance:
            # sklearn keeps a split only if its impurity improvement + eps >= 0.
            if context.split_impurities(k, node, feature, threshold)[3] + EPSILON < 0.0:
                return None
        return feature, threshold

    @staticmethod
    def _running_sums(y: np.ndarray, valid: np.ndarray, total: float) -> np.ndarray:
        """sklearn's S_l at each evaluated split (n_left in `valid`, increasing): float64 sums
        carried from the previous evaluated split, forward unless the step is longer than
        what remains, then recomputed from the end (Criterion.update / reverse_reset)."""
        m = y.size
        steps = np.diff(valid, prepend=0)
        backward = steps > m - valid
        if not backward.any():
            return np.cumsum(y)[valid - 1]
        sums = np.empty(valid.size)
        s, pos = 0.0, 0
        for i, new_pos in enumerate(valid.tolist()):
            if backward[i]:
                s = total
                for p in range(m - 1, new_pos - 1, -1):
                    s -= y[p]
            else:
                for p in range(pos, new_pos):
                    s += y[p]
            sums[i], pos = s, new_pos
        return sums

    def _leaf_values(
        self, residuals: np.ndarray, onehot: np.ndarray, heap: np.ndarray, num_heap: int
    ) -> np.ndarray:
        """Newton step per leaf, (K, heap): mean(r) [* (K-1)/K] / mean(p (1 - p)), p = y - r.

        The means are numpy's (pairwise sums over the leaf's samples in index order), as
        sklearn's np.average, so the leaf values agree to the bit.
        """
        k_trees = residuals.shape[0]
        flat = (np.arange(k_trees)[:, None] * num_heap + heap).ravel()
        # By tree and leaf, samples in index order (radix sort of small keys, per tree).
        order = (np.argsort(heap.astype(np.uint8), axis=1, kind="stable")
                 + np.arange(k_trees)[:, None] * heap.shape[1]).ravel()
        sizes = np.bincount(flat, minlength=k_trees * num_heap)
        prob = onehot - residuals
        gathered = residuals.ravel()[order]
        hessian = (prob * (1.0 - prob)).ravel()[order]
        values = np.zeros(k_trees * num_heap)
        stops = np.cumsum(sizes)
        for leaf in np.flatnonzero(sizes):
            start, stop = stops[leaf] - sizes[leaf], stops[leaf]
            numerator = np.mean(gathered[start:stop]) * self._newton_factor
            denominator = float(np.mean(hessian[start:stop]))
            if abs(denominator) >= _MIN_DENOMINATOR:
                values[leaf] = float(numerator) / denominator
        return values.reshape(k_trees, num_heap)

    # --- prediction -------------------------------------------------------------------------

    def decision_function(self, x: np.ndarray) -> np.ndarray:
        """Raw scores (n, K) of new points (x converted to float32, as sklearn does)."""
        x32 = np.ascontiguousarray(x, dtype=np.float32)
        features, thresholds, values = self.trees_
        k_trees = features.shape[1]
        m = x32.shape[0]
        raw = np.repeat(self.init_raw_[:, None], m, axis=1)
        points = np.arange(m)[None, :]
        for stage in range(features.shape[0]):
            heap = np.zeros((k_trees, m), dtype=np.intp)
            for _ in range(self.max_depth):
                feature = np.take_along_axis(features[stage], heap, axis=1)
                threshold = np.take_along_axis(thresholds[stage], heap, axis=1)
                right = x32[points, np.maximum(feature, 0)] > threshold
                heap = np.where(feature >= 0, 2 * heap + 1 + right, heap)
            raw += self.learning_rate * np.take_along_axis(values[stage], heap, axis=1)
        return raw.T

    def labels_of(self, raw: np.ndarray) -> np.ndarray:
        """Class labels of raw scores (n, K): argmax, or raw >= 0 for 2 classes (sklearn)."""
        if raw.shape[1] == 1:
            return self.classes_[(raw[:, 0] >= 0).astype(np.intp)]
        return self.classes_[np.argmax(raw, axis=1)]

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Class labels of new points."""
        return self.labels_of(self.decision_function(x))

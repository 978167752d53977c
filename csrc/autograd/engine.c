/* engine.c — the autograd graph: recording nodes, backward, releasing.
 *
 * Nodes hang off the tensors they produced (tensor->grad_fn) and point to
 * their inputs' nodes, so a graph lives exactly as long as some result of it
 * does. Saved tensors are aliases without autograd links, which keeps the
 * refcounts acyclic even when an op saves its own output. */
#include <string.h>

#include "../df.h"

static _Thread_local bool grad_mode = true;

bool df_grad_enabled(void) { return grad_mode; }

bool df_set_grad_enabled(bool on) {
  bool previous = grad_mode;
  grad_mode = on;
  return previous;
}

bool df_needs_grad(const df_tensor *t) { return grad_mode && t && t->requires_grad; }

bool df_any_needs_grad(int n, const df_tensor *const *ts) {
  for (int i = 0; i < n; i++)
    if (df_needs_grad(ts[i])) return true;
  return false;
}

/* ---- nodes -------------------------------------------------------------- */

void df_node_retain(df_node *node) { node->refcount++; }

static void release_saved(df_node *node) {
  for (int i = 0; i < DF_NODE_MAX_SAVED; i++) {
    df_tensor_release(node->saved[i]);
    node->saved[i] = NULL;
  }
  df_free(node->extra);
  node->extra = NULL;
}

/* Iterative, so a chain of a million nodes doesn't overflow the C stack. A
 * node goes on the stack only when its count reaches zero, so a node that
 * feeds one op twice (y * y) is still freed exactly once. */
void df_node_release(df_node *node) {
  if (!node || --node->refcount > 0) return;
  node->next_free = NULL;
  df_node *stack = node;
  while (stack) {
    df_node *n = stack;
    stack = n->next_free;
    for (int i = 0; i < n->ninputs; i++) {
      df_tensor_release(n->inputs[i].leaf);
      df_node *in = n->inputs[i].node;
      if (in && --in->refcount == 0) {
        in->next_free = stack;
        stack = in;
      }
    }
    release_saved(n);
    df_tensor_release(n->pending);
    df_free(n->inputs);
    df_free(n);
  }
}

df_status df_autograd_record(df_tensor *out, const char *name, df_backward_fn backward, int ninputs,
                             const df_tensor *const *inputs, df_node **node) {
  *node = NULL;
  if (!df_any_needs_grad(ninputs, inputs)) return DF_OK;
  df_node *n = df_calloc(1, sizeof *n);
  df_edge *edges = df_calloc((size_t)ninputs, sizeof *edges);
  if (!n || !edges) {
    df_free(n);
    df_free(edges);
    return df_error(DF_ENOMEM, "%s: out of memory recording the autograd graph", name);
  }
  n->refcount = 1;
  n->name = name;
  n->backward = backward;
  n->ninputs = ninputs;
  n->inputs = edges;
  for (int i = 0; i < ninputs; i++) {
    const df_tensor *t = inputs[i];
    edges[i].ndim = t->ndim;
    memcpy(edges[i].size, t->size, sizeof(int64_t) * (size_t)t->ndim);
    if (!df_needs_grad(t)) continue;
    if (t->grad_fn) {
      edges[i].node = t->grad_fn;
      df_node_retain(t->grad_fn);
    } else {
      edges[i].leaf = (df_tensor *)t;
      df_tensor_retain(edges[i].leaf);
    }
  }
  n->result_version = out->storage->version;
  df_node_release(out->grad_fn);
  out->grad_fn = n;
  out->requires_grad = true;
  *node = n;
  return DF_OK;
}

df_status df_node_save(df_node *node, int slot, const df_tensor *t) {
  if (slot < 0 || slot >= DF_NODE_MAX_SAVED) return df_error(DF_EINVAL, "%s: bad saved-tensor slot %d", node->name, slot);
  df_tensor *alias;
  df_status st = df_tensor_alias(&alias, t);
  if (st) return st;
  df_tensor_release(node->saved[slot]);
  node->saved[slot] = alias;
  node->saved_version[slot] = t->storage->version;
  return DF_OK;
}

df_status df_node_save_input(df_node *node, int slot, int input, const df_tensor *t) {
  if (slot < 0 || slot >= DF_NODE_MAX_SAVED) return df_error(DF_EINVAL, "%s: bad saved-tensor slot %d", node->name, slot);
  df_node *producer = input >= 0 && input < node->ninputs ? node->inputs[input].node : NULL;
  /* only the producer's own result, as it made it (not written in place since) */
  if (!producer || !producer->forward_again || t->grad_fn != producer ||
      t->storage->version != producer->result_version)
    return df_node_save(node, slot, t);
  df_tensor_release(node->saved[slot]);
  node->saved[slot] = NULL;
  node->recompute[slot] = (signed char)(input + 1);
  return DF_OK;
}

static df_status check_saved(const df_node *n);

df_status df_node_forward_again(df_node *producer, df_tensor **out) {
  df_status st = check_saved(producer);
  if (st) return st;
  bool previous = df_set_grad_enabled(false);
  st = producer->forward_again(producer, out);
  df_set_grad_enabled(previous);
  return st;
}

df_status df_node_saved(df_node *node, int slot, df_tensor **out) {
  if (node->recompute[slot]) return df_node_forward_again(node->inputs[node->recompute[slot] - 1].node, out);
  df_tensor_retain(node->saved[slot]);
  *out = node->saved[slot];
  return DF_OK;
}

bool df_node_needs_grad(const df_node *node, int input) {
  return input >= 0 && input < node->ninputs && (node->inputs[input].node || node->inputs[input].leaf);
}

/* ---- helpers for gradients ---------------------------------------------- */

df_status df_sum_to_shape(df_tensor **out, const df_tensor *g, int ndim, const int64_t *size) {
  if (g->ndim == ndim && memcmp(g->size, size, sizeof(int64_t) * (size_t)ndim) == 0) {
    df_tensor_retain((df_tensor *)g);
    *out = (df_tensor *)g;
    return DF_OK;
  }
  int lead = g->ndim - ndim, dims[DF_MAX_DIMS], n = 0;
  if (lead < 0) return df_error(DF_EINVAL, "backward: gradient has fewer dims than its input");
  for (int d = 0; d < g->ndim; d++) {
    int s = d - lead;
    if (s < 0 || (size[s] == 1 && g->size[d] != 1)) dims[n++] = d;
    else if (size[s] != g->size[d]) {
      char b1[128], b2[128];
      return df_error(DF_EINVAL, "backward: gradient of shape %s does not reduce to %s",
                      df_format_shape(b1, sizeof b1, g->ndim, g->size), df_format_shape(b2, sizeof b2, ndim, size));
    }
  }
  if (n == 0) return df_tensor_reshape(out, g, ndim, size); /* only leading size-1 dims to drop */
  df_tensor *summed;
  df_status st = df_reduce(DF_SUM, &summed, g, n, dims, true, 0);
  if (st) return st;
  st = df_tensor_reshape(out, summed, ndim, size);
  df_tensor_release(summed);
  return st;
}

/* *acc += g, taking ownership of g; in place only when nobody else can see *acc. */
static df_status accumulate(df_tensor **acc, df_tensor *g) {
  if (!*acc) {
    *acc = g;
    return DF_OK;
  }
  df_tensor *a = *acc;
  df_status st;
  if (a->refcount == 1 && a->storage->refcount == 1 && !df_tensor_has_overlap(a)) {
    st = df_binary_(DF_ADD, a, g);
  } else {
    df_tensor *sum;
    st = df_binary(DF_ADD, &sum, a, g);
    if (!st) {
      df_tensor_release(a);
      *acc = sum;
    }
  }
  df_tensor_release(g);
  return st;
}

/* leaf->grad += g (the leaf's grad is always its own contiguous tensor) */
static df_status accumulate_leaf(df_tensor *leaf, df_tensor *g) {
  df_status st;
  if (!leaf->grad) {
    df_tensor *own;
    if (g->refcount == 1 && g->storage->refcount == 1 && df_tensor_is_contiguous(g) && g->offset == 0) {
      own = g;
      g = NULL;
    } else if ((st = df_tensor_clone(&own, g))) {
      df_tensor_release(g);
      return st;
    }
    leaf->grad = own;
    df_tensor_release(g);
    return DF_OK;
  }
  if (df_tensor_has_overlap(leaf->grad)) { /* the user set an expanded tensor: add out of place */
    df_tensor *sum;
    if (!(st = df_binary(DF_ADD, &sum, leaf->grad, g))) {
      df_tensor_release(leaf->grad);
      leaf->grad = sum;
    }
  } else {
    st = df_binary_(DF_ADD, leaf->grad, g);
  }
  df_tensor_release(g);
  return st;
}

static const char *corrupt_name;
static float corrupt_factor = 1.0f;

void df_debug_corrupt_backward(const char *name, float factor) {
  corrupt_name = name;
  corrupt_factor = factor;
}

/* ---- backward ----------------------------------------------------------- */

typedef struct {
  df_node **items;
  size_t count, cap;
} node_list;

static df_status list_push(node_list *l, df_node *n) {
  if (l->count == l->cap) {
    size_t cap = l->cap ? 2 * l->cap : 64;
    df_node **items = df_malloc(cap * sizeof *items);
    if (!items) return df_error(DF_ENOMEM, "backward: out of memory");
    if (l->count) memcpy(items, l->items, l->count * sizeof *items);
    df_free(l->items);
    l->items = items;
    l->cap = cap;
  }
  l->items[l->count++] = n;
  return DF_OK;
}

static uint64_t visit_epoch;

/* All nodes reachable from root, each once, with dependencies = number of
 * edges into it from the collected nodes. */
static df_status collect(df_node *root, node_list *all) {
  uint64_t mark = ++visit_epoch;
  node_list stack = {0};
  df_status st = list_push(&stack, root);
  root->visit_mark = mark;
  root->dependencies = 0;
  while (!st && stack.count) {
    df_node *n = stack.items[--stack.count];
    if ((st = list_push(all, n))) break;
    for (int i = 0; i < n->ninputs && !st; i++) {
      df_node *in = n->inputs[i].node;
      if (!in) continue;
      if (in->visit_mark != mark) {
        in->visit_mark = mark;
        in->dependencies = 0;
        st = list_push(&stack, in);
      }
      in->dependencies++;
    }
  }
  df_free(stack.items);
  return st;
}

static df_status check_saved(const df_node *n) {
  if (n->released)
    return df_error(DF_EINVAL, "backward: the graph through '%s' was freed by an earlier backward "
                               "(pass retain_graph = true to run backward twice)", n->name);
  for (int i = 0; i < DF_NODE_MAX_SAVED; i++)
    if (n->saved[i] && n->saved[i]->storage->version != n->saved_version[i])
      return df_error(DF_EINVAL, "backward: a tensor that '%s' saved for its gradient was modified in place since", n->name);
  return DF_OK;
}

/* Runs one node: its gradients go to its inputs' pending sums or leaves. */
static df_status run_node(df_node *n, node_list *ready) {
  df_status st = check_saved(n);
  if (st) return st;
  df_tensor *grads[64] = {NULL}, **grad_in = grads;
  if (n->ninputs > 64) {
    grad_in = df_calloc((size_t)n->ninputs, sizeof *grad_in);
    if (!grad_in) return df_error(DF_ENOMEM, "backward: out of memory");
  }
  st = n->backward(n, n->pending, grad_in);
  if (!st && corrupt_name && strcmp(corrupt_name, n->name) == 0)
    for (int i = 0; i < n->ninputs && !st; i++)
      if (grad_in[i]) {
        df_tensor *scaled;
        if (!(st = df_binary_scalar(DF_MUL, &scaled, grad_in[i], corrupt_factor, false))) {
          df_tensor_release(grad_in[i]);
          grad_in[i] = scaled;
        }
      }
  for (int i = 0; i < n->ninputs; i++) {
    df_tensor *g = grad_in[i];
    grad_in[i] = NULL;
    df_edge *e = &n->inputs[i];
    if (!g) continue;
    if (st || (!e->node && !e->leaf)) {
      df_tensor_release(g);
      continue;
    }
    df_tensor *shaped;
    st = df_sum_to_shape(&shaped, g, e->ndim, e->size);
    df_tensor_release(g);
    if (st) continue;
    if (e->leaf) {
      st = accumulate_leaf(e->leaf, shaped);
    } else {
      st = accumulate(&e->node->pending, shaped);
    }
  }
  /* release each input's dependency whatever happened, so the walk stays consistent */
  for (int i = 0; i < n->ninputs; i++) {
    df_node *in = n->inputs[i].node;
    if (in && --in->dependencies == 0 && !st) st = list_push(ready, in);
  }
  if (grad_in != grads) df_free(grad_in);
  return st;
}

df_status df_backward(df_tensor *root, const df_tensor *grad, bool retain_graph) {
  if (!root->requires_grad)
    return df_error(DF_EINVAL, "backward: the tensor does not require grad (no input of it had requires_grad set)");
  df_tensor *seed;
  df_status st;
  if (grad) {
    if (!df_tensor_same_shape(grad, root)) {
      char b1[128], b2[128];
      return df_error(DF_EINVAL, "backward: gradient of shape %s given for a tensor of shape %s",
                      df_format_shape(b1, sizeof b1, grad->ndim, grad->size), df_format_shape(b2, sizeof b2, root->ndim, root->size));
    }
    bool mode = df_set_grad_enabled(false); /* the seed is a plain copy, without grad's graph */
    st = df_tensor_clone(&seed, grad);
    df_set_grad_enabled(mode);
    if (st) return st;
  } else {
    if (df_tensor_numel(root) != 1) {
      char b[128];
      return df_error(DF_EINVAL, "backward: a gradient must be given for a non-scalar tensor of shape %s "
                                 "(call backward on a scalar such as x:sum(), or pass the gradient)",
                      df_format_shape(b, sizeof b, root->ndim, root->size));
    }
    if ((st = df_tensor_full(&seed, root->ndim, root->size, 1.0f))) return st;
  }
  bool previous = df_set_grad_enabled(false);
  if (!root->grad_fn) { /* a leaf: its gradient is the seed */
    st = accumulate_leaf(root, seed);
    df_set_grad_enabled(previous);
    return st;
  }
  node_list all = {0}, ready = {0};
  df_node *start = root->grad_fn;
  df_node_retain(start); /* the walk holds the graph even if root is released meanwhile */
  st = collect(start, &all);
  if (!st) {
    start->pending = seed;
    seed = NULL;
    st = list_push(&ready, start);
  }
  while (!st && ready.count) {
    df_node *n = ready.items[--ready.count];
    st = run_node(n, &ready);
    df_tensor_release(n->pending);
    n->pending = NULL;
    if (!retain_graph) {
      release_saved(n);
      n->released = true;
    }
  }
  for (size_t i = 0; i < all.count; i++) { /* after an error, drop partial sums */
    df_tensor_release(all.items[i]->pending);
    all.items[i]->pending = NULL;
  }
  df_tensor_release(seed);
  df_free(all.items);
  df_free(ready.items);
  df_node_release(start);
  df_set_grad_enabled(previous);
  return st;
}

df_status df_detach(df_tensor **out, const df_tensor *t) { return df_tensor_alias(out, t); }

df_status df_set_requires_grad(df_tensor *t, bool on) {
  if (t->grad_fn && !on)
    return df_error(DF_EINVAL, "requires_grad: only leaves can stop requiring grad (use detach on a computed tensor)");
  if (!t->grad_fn) t->requires_grad = on;
  return DF_OK;
}

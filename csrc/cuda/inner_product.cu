// Inner-product top-k on the GPU: not implemented yet. The entry exists so that both modules expose the same op and
// a CUDA caller gets a clear message instead of an import or attribute error.
#include "tokenset/inner_product.h"

namespace tokenset {
namespace cuda {

void inner_product_topk(const InnerProductParams& p, const Launch&) {
  validate(p);
  throw ValueError("inner_product_topk has no CUDA kernel yet; pass CPU (numpy or torch CPU) arrays");
}

}  // namespace cuda
}  // namespace tokenset

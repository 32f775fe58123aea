// A program outside the drt tree. It is built against an installed drt (find_package) or a
// source checkout (add_subdirectory) and exits 0 only when backward() gives the gradient that
// the math says it should.
#include <drt/core.hpp>

#include <cmath>
#include <cstdio>

int main() {
  using namespace drt;

  // Lazy expressions: the whole right-hand side is evaluated in one pass, no temporaries.
  const Tensor<double> x = Tensor<double>::from({3, 2}, {0.5, -1.0, 2.0, 1.5, -0.5, 0.25});
  const Tensor<double> z = eval(tanh(2.0 * x + 1.0));  // (3, 2)

  // A trainable weight, a forward pass recorded on the tape, and backward.
  Parameter<double> W(random_normal<double>({4, 3}, /*seed=*/7));
  Var<double> y = matmul(W, constant(z));  // (4, 2)
  Var<double> loss = sum_all(square(y));   // sum of y^2
  backward(loss);                          // W.grad() = 2 * y * z^T

  // The same gradient by hand, from the formula, with plain loops.
  double worst = 0, expected_loss = 0;
  for (Index i = 0; i < 4; ++i) {
    double row[2] = {0, 0};
    for (Index j = 0; j < 2; ++j)
      for (Index k = 0; k < 3; ++k) row[j] += W.value()(i, k) * std::tanh(2.0 * x(k, j) + 1.0);
    expected_loss += row[0] * row[0] + row[1] * row[1];
    for (Index k = 0; k < 3; ++k) {
      double g = 0;
      for (Index j = 0; j < 2; ++j) g += 2.0 * row[j] * std::tanh(2.0 * x(k, j) + 1.0);
      worst = std::max(worst, std::abs(g - W.grad()(i, k)) / (1.0 + std::abs(g)));
    }
  }
  const double loss_error = std::abs(loss.item() - expected_loss) / (1.0 + expected_loss);
  std::printf("drt consumer: loss %.6f (expected %.6f), worst gradient error %.3g\n", loss.item(), expected_loss,
              worst);
  tape().reset();
  const bool ok = worst < 1e-12 && loss_error < 1e-12;
  std::printf("%s\n", ok ? "OK" : "FAILED");
  return ok ? 0 : 1;
}

// Second translation unit: the same model and tokens as main.cu, through the same headers.
#include "tiny_model.hpp"

float second_unit_loss() {
  drt::DrtModel<float> model(two_unit_config(), 3);
  model.move_to(drt::Device::cuda);
  const float loss = model.loss(two_unit_tokens()).item();
  drt::tape().reset();
  return loss;
}

// Conversion between ModelConfig and the FlatBuffer HParams table (private to formats/coda).
#pragma once

#include <flatbuffers/flatbuffers.h>

#include "coda/model_config.h"
#include "coda_generated.h"

namespace coda {

flatbuffers::Offset<fb::HParams> WriteHParams(flatbuffers::FlatBufferBuilder& b, const ModelConfig& c);
Result<ModelConfig> ReadHParams(const fb::HParams& h);

}  // namespace coda

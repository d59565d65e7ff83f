// Emulator stand-in for the toolkit header: the types live in cuda_emu.h.
#pragma once
#include "../cuda_emu.h"

"""How much memory a device has free: the bound every size derived from user data is checked
against before allocating (data files, model size, minibatch plans, client chunks)."""
from __future__ import annotations

import os

import torch


def available_memory_bytes(device: torch.device) -> int:
    """Free memory on ``device`` in bytes: the CUDA driver's free bytes, or the kernel's
    ``MemAvailable`` on CPU (half the physical memory where /proc/meminfo is missing)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2)

/*
 * Stand-in for the kernel-internal <xen/interface/xen.h>.
 *
 * The Linux UAPI headers <xen/privcmd.h>, <xen/evtchn.h> and <xen/gntdev.h>
 * use domid_t, xen_pfn_t and grant_ref_t, which the kernel takes from its own
 * copy of the Xen public headers. That copy is not exported to userspace, so
 * regen-bindings.sh puts this file first on the include path instead. The
 * typedefs match the Xen public ABI on the 64-bit targets vmsgd supports
 * (x86_64: xen_pfn_t is unsigned long; arm64: uint64_t; both 8 bytes).
 */
#ifndef VMSG_XEN_INTERFACE_SHIM_H
#define VMSG_XEN_INTERFACE_SHIM_H

#include <stdint.h>

typedef uint16_t domid_t;
typedef uint64_t xen_pfn_t;
typedef uint32_t grant_ref_t;

#endif

/*
 * hello-init: the smallest useful /init for a herd microVM (demo, hardware-KVM hosts).
 *
 * Built static (gcc -static -Os) by resources/demo/build-initramfs.sh and packed as /init in
 * an initramfs. It:
 *   1. mounts /proc, /sys and devtmpfs on /dev (the kernel mounts nothing for an initramfs),
 *   2. prints "Hello from a herd microVM: Linux <release> on <n> CPUs, <MemTotal> kB",
 *   3. writes the byte 123 to guest-physical 0xC0000000 through /dev/mem: herd-vmm's boot
 *      timer (docs/guest-interface.md), which logs Guest-boot-time on the host,
 *   4. ends the VM with the status in its environment variable HERD_DEMO_EXIT (0-255,
 *      default 0; `HERD_DEMO_EXIT=3` on the kernel command line reaches init's environment)
 *      by writing it to herd-vmm's exit-status port 0xf4; if port I/O is refused it falls back
 *      to reboot(RB_AUTOBOOT), which with `reboot=k` on the command line resets through port
 *      0x64 (herd-vmm exits 0).
 *
 * PID 1 must never return (the kernel would panic), so every path ends in a reboot attempt and
 * then sleeps forever. Under PVM (our build hosts) user space cannot start at all, so this
 * program only runs on hardware KVM; it still builds everywhere.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/io.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/stat.h>
#include <sys/sysinfo.h>
#include <sys/utsname.h>
#include <unistd.h>

#define BOOT_TIMER_ADDR 0xC0000000UL /* herd-vmm / Firecracker boot-timer MMIO byte */
#define BOOT_TIMER_MAGIC 123
#define EXIT_STATUS_PORT 0xf4 /* herd-vmm: a one-byte write ends the VM with that status */

static void warnf(const char *fmt, ...)
{
	va_list ap;

	fputs("hello-init: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
}

/* Mount fs at dir unless something is there already (EBUSY); create dir if missing. */
static void mount_fs(const char *fstype, const char *dir)
{
	if (mkdir(dir, 0755) != 0 && errno != EEXIST)
		warnf("mkdir %s: %s", dir, strerror(errno));
	if (mount(fstype, dir, fstype, MS_NOSUID | MS_NOEXEC, NULL) != 0 && errno != EBUSY)
		warnf("mount %s on %s: %s", fstype, dir, strerror(errno));
}

/*
 * The initramfs is expected to carry /dev/console, in which case the kernel opened it as fds
 * 0-2 before starting us. If it did not, try devtmpfs's console so the greeting is seen.
 */
static void ensure_stdio(void)
{
	int fd;

	if (fcntl(STDOUT_FILENO, F_GETFD) != -1)
		return;
	fd = open("/dev/console", O_RDWR | O_NOCTTY);
	if (fd < 0)
		return;
	for (int i = 0; i < 3; i++)
		if (fd != i)
			dup2(fd, i);
	if (fd > 2)
		close(fd);
}

/* MemTotal from /proc/meminfo in kB; falls back to sysinfo(2) if /proc is unavailable. */
static unsigned long long mem_total_kb(void)
{
	char line[256];
	unsigned long long kb = 0;
	struct sysinfo si;
	FILE *f = fopen("/proc/meminfo", "re");

	if (f) {
		while (fgets(line, sizeof(line), f))
			if (sscanf(line, "MemTotal: %llu kB", &kb) == 1)
				break;
		fclose(f);
	}
	if (kb == 0 && sysinfo(&si) == 0)
		kb = (unsigned long long)si.totalram * si.mem_unit / 1024;
	return kb;
}

static void greet(void)
{
	struct utsname u;
	long cpus = sysconf(_SC_NPROCESSORS_ONLN);

	if (uname(&u) != 0)
		snprintf(u.release, sizeof(u.release), "?");
	printf("Hello from a herd microVM: Linux %s on %ld CPUs, %llu kB\n",
	       u.release, cpus, mem_total_kb());
	fflush(stdout);
}

/*
 * Signal "booted" to the VMM: one byte store of 123 to guest-physical 0xC0000000. mmap the
 * page and store through a volatile pointer (one MMIO write exit); if mmap is refused, pwrite
 * the byte at that offset of /dev/mem instead.
 */
static void signal_boot_timer(void)
{
	long page = sysconf(_SC_PAGESIZE);
	off_t base = (off_t)(BOOT_TIMER_ADDR & ~((unsigned long)page - 1));
	unsigned char magic = BOOT_TIMER_MAGIC;
	int fd = open("/dev/mem", O_RDWR | O_SYNC | O_CLOEXEC);

	if (fd < 0) {
		warnf("open /dev/mem: %s (no boot-timer signal)", strerror(errno));
		return;
	}
	void *map = mmap(NULL, (size_t)page, PROT_READ | PROT_WRITE, MAP_SHARED, fd, base);
	if (map != MAP_FAILED) {
		volatile uint8_t *reg = (volatile uint8_t *)map + (BOOT_TIMER_ADDR - (unsigned long)base);
		*reg = magic;
		munmap(map, (size_t)page);
	} else if (pwrite(fd, &magic, 1, (off_t)BOOT_TIMER_ADDR) != 1) {
		warnf("boot timer write via /dev/mem failed: %s", strerror(errno));
	}
	close(fd);
}

/* HERD_DEMO_EXIT as 0-255; anything else is reported and treated as 0. */
static int exit_status(void)
{
	const char *s = getenv("HERD_DEMO_EXIT");
	char *end;
	long v;

	if (!s || !*s)
		return 0;
	errno = 0;
	v = strtol(s, &end, 10);
	if (errno || *end || v < 0 || v > 255) {
		warnf("HERD_DEMO_EXIT=%s is not 0-255; using 0", s);
		return 0;
	}
	return (int)v;
}

static void __attribute__((noreturn)) end_vm(int status)
{
	fflush(NULL);
	sync();
	if (ioperm(EXIT_STATUS_PORT, 1, 1) == 0) {
		outb((unsigned char)status, EXIT_STATUS_PORT);
		/* Not herd-vmm (or it ignored the port): fall through to a reset. */
		warnf("port 0x%x write did not end the VM; rebooting", EXIT_STATUS_PORT);
	} else {
		warnf("ioperm(0x%x): %s; rebooting (exit status %d lost)", EXIT_STATUS_PORT,
		      strerror(errno), status);
	}
	reboot(RB_AUTOBOOT);
	warnf("reboot: %s", strerror(errno));
	for (;;)
		pause();
}

int main(void)
{
	mount_fs("proc", "/proc");
	mount_fs("sysfs", "/sys");
	mount_fs("devtmpfs", "/dev");
	ensure_stdio();

	greet();
	signal_boot_timer();
	end_vm(exit_status());
}

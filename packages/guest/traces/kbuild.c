/* The source file that record-kbuild.sh compiles: a few functions of the kind a kernel build compiles. */
struct list_head {
  struct list_head *next, *prev;
};

static inline void list_add(struct list_head *n, struct list_head *head) {
  n->next = head->next;
  n->prev = head;
  head->next->prev = n;
  head->next = n;
}

unsigned long checksum(const unsigned char *p, unsigned long len) {
  unsigned long s = 0;
  for (unsigned long i = 0; i < len; i++) s = (s << 5) + s + p[i];
  return s;
}

void push(struct list_head *n, struct list_head *head) { list_add(n, head); }

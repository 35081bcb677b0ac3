;;; Driven by tests/guile_interop.rs: libgcrypt (through guile-gcrypt) on one side of every
;;; check, ferry on the other.  Usage: guile interop.scm generate N-ECDSA N-EDDSA
;;;                                     guile interop.scm check < lines
;;;                                     guile interop.scm reprint < lines
;;; Every text (key files, signatures) travels hex-encoded, one record per line.
(use-modules (gcrypt pk-crypto) (gcrypt base16) (gcrypt random)
             (rnrs bytevectors) (ice-9 rdelim) (ice-9 match) (ice-9 iconv))

;; libgcrypt's advanced text may hold raw bytes >= 0xA1 inside quoted strings (a secret `d`
;; sometimes prints that way); guile-gcrypt converts with ISO-8859-1, so do we.
(define (text->hex s) (bytevector->base16-string (string->bytevector s "ISO-8859-1")))
(define (hex->text h) (bytevector->string (base16-string->bytevector h) "ISO-8859-1"))

(define (data-for key-type hash)
  (string->canonical-sexp
   (if (eq? key-type 'eddsa)
       (string-append "(data (flags eddsa) (hash-algo sha512) (value #"
                      (bytevector->base16-string hash) "#))")
       (string-append "(data (flags rfc6979) (hash sha256 #"
                      (bytevector->base16-string hash) "#))"))))

(define (signature-sexp data sig-val public-key)
  ;; As guix/pki.scm builds it.
  (string->canonical-sexp
   (string-append "(signature " (canonical-sexp->string data)
                  (canonical-sexp->string sig-val)
                  (canonical-sexp->string public-key) ")")))

;; generate: one line per key: TYPE PUB SEC HASH SIG (hex of the advanced texts).
(define (generate type params n)
  (let loop ((i 0))
    (when (< i n)
      (let* ((pair (generate-key (string->canonical-sexp params)))
             (pub (find-sexp-token pair 'public-key))
             (sec (find-sexp-token pair 'private-key))
             (hash (gen-random-bv 32))
             (data (data-for type hash))
             (sig (signature-sexp data (sign data sec) pub)))
        (format #t "~a ~a ~a ~a ~a~%" type
                (text->hex (canonical-sexp->string pub))
                (text->hex (canonical-sexp->string sec))
                (bytevector->base16-string hash)
                (text->hex (canonical-sexp->string sig))))
      (loop (+ i 1)))))

;; check: lines TYPE PUB SEC HASH SIG made by ferry.  For each: libgcrypt parses the key files,
;; verifies ferry's signature, rejects it for another hash, and signs the same hash with
;; ferry's secret key: the result must equal ferry's sig-val (both schemes are deterministic).
(define (check-line line)
  (match (string-split line #\space)
    ((type pub sec hash sig)
     (let* ((type (string->symbol type))
            (pub (string->canonical-sexp (hex->text pub)))
            (sec (string->canonical-sexp (hex->text sec)))
            (hash (base16-string->bytevector hash))
            (sig (string->canonical-sexp (hex->text sig)))
            (data (find-sexp-token sig 'data))
            (sig-val (find-sexp-token sig 'sig-val))
            (other (let ((h (bytevector-copy hash)))
                     (bytevector-u8-set! h 0 (logxor 1 (bytevector-u8-ref h 0)))
                     h))
            (ours (sign (data-for type hash) sec)))
       (cond
        ((not (verify sig-val data pub)) "FAIL verify")
        ((not (verify sig-val (data-for type hash) (find-sexp-token sig 'public-key)))
         "FAIL verify with the embedded key")
        ((verify sig-val (data-for type other) pub) "FAIL accepted a wrong hash")
        ((not (string=? (canonical-sexp->string ours) (canonical-sexp->string sig-val)))
         (string-append "FAIL sig-val differs: " (canonical-sexp->string ours)))
        (else "ok"))))
    (_ "FAIL malformed line")))

;; acl: first line the ACL text (hex), then one public key per line (hex).  Prints, per key,
;; whether Guix's `authorized-key?' accepts it, then the ACL Guix's `public-keys->acl' writes
;; for all the keys (hex).
(define (acl->public-keys acl)                 ; as guix/pki.scm
  (match (canonical-sexp->sexp acl)
    (('acl ('entry subjects ('tag ('guix 'import))) ...) subjects)
    (_ (error "invalid access-control list" acl))))

(define (public-keys->acl keys)                ; as guix/pki.scm
  (sexp->canonical-sexp
   `(acl ,@(map (lambda (key)
                  `(entry ,(canonical-sexp->sexp key) (tag (guix import))))
                keys))))

(define (check-acl)
  (let* ((acl (string->canonical-sexp (hex->text (read-line))))
         (keys (let loop ((line (read-line)) (acc '()))
                 (if (eof-object? line)
                     (reverse acc)
                     (loop (read-line)
                           (cons (string->canonical-sexp (hex->text line)) acc))))))
    (for-each (lambda (key)
                (display (if (member (canonical-sexp->sexp key) (acl->public-keys acl))
                             "yes" "no"))
                (newline))
              keys)
    (display (text->hex (canonical-sexp->string (public-keys->acl keys))))
    (newline)))

;; reprint: one S-expression text per line (hex); libgcrypt parses each and prints it back
;; in its advanced layout (hex), or "FAIL ..." if it cannot parse it.
(define (reprint)
  (let loop ((line (read-line)))
    (unless (eof-object? line)
      (display (catch #t
                 (lambda () (text->hex (canonical-sexp->string
                                        (string->canonical-sexp (hex->text line)))))
                 (lambda args (format #f "FAIL ~s" args))))
      (newline)
      (loop (read-line)))))

(match (cdr (command-line))
  (("reprint") (reprint))
  (("acl") (check-acl))
  (("generate" n-ecdsa n-eddsa)
   (generate 'ecdsa "(genkey (ecdsa (curve Ed25519) (flags rfc6979)))" (string->number n-ecdsa))
   (generate 'eddsa "(genkey (ecc (curve Ed25519) (flags eddsa)))" (string->number n-eddsa)))
  (("check")
   (let loop ((line (read-line)) (i 0))
     (unless (eof-object? line)
       (format #t "~a ~a~%" i (catch #t (lambda () (check-line line))
                                 (lambda args (format #f "FAIL exception ~s" args))))
       (loop (read-line) (+ i 1))))))

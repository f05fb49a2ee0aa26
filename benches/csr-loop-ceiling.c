// The CSR forward's inner loop alone, in C, as a ceiling for sprig's kernel (kernels.md,
// "Where the CSR forward stands"): per stored weight one broadcast and eight FMAs, each loading
// one 8-float piece of a 64-lane panel row; 1536 rows of PER random columns out of K, the 8
// accumulators stored to a tile after each row.
//   gcc -O2 -march=znver3 benches/csr-loop-ceiling.c -o csr-loop && ./csr-loop 384 38
//   (K=384: panel 96 KiB, in L2; K=38: in L1)
#include <immintrin.h>
#include <stdio.h>
#include <stdint.h>
#include <time.h>
#include <stdlib.h>
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
__attribute__((target("avx2,fma"))) void run(const float* pan, const uint16_t* col, const float* val, const int* rp, int rows, float* tile, int reps){
  for(int r=0;r<reps;r++){
   for(int row=0;row<rows;row++){
    __m256 a0=_mm256_setzero_ps(),a1=a0,a2=a0,a3=a0,a4=a0,a5=a0,a6=a0,a7=a0;
    for(int t=rp[row];t<rp[row+1];t++){
      const float* x=pan+col[t]*64; __m256 w=_mm256_broadcast_ss(val+t);
      a0=_mm256_fmadd_ps(w,_mm256_load_ps(x),a0); a1=_mm256_fmadd_ps(w,_mm256_load_ps(x+8),a1);
      a2=_mm256_fmadd_ps(w,_mm256_load_ps(x+16),a2); a3=_mm256_fmadd_ps(w,_mm256_load_ps(x+24),a3);
      a4=_mm256_fmadd_ps(w,_mm256_load_ps(x+32),a4); a5=_mm256_fmadd_ps(w,_mm256_load_ps(x+40),a5);
      a6=_mm256_fmadd_ps(w,_mm256_load_ps(x+48),a6); a7=_mm256_fmadd_ps(w,_mm256_load_ps(x+56),a7);
    }
    float* o=tile+(row%128)*64;
    _mm256_store_ps(o,a0);_mm256_store_ps(o+8,a1);_mm256_store_ps(o+16,a2);_mm256_store_ps(o+24,a3);
    _mm256_store_ps(o+32,a4);_mm256_store_ps(o+40,a5);_mm256_store_ps(o+48,a6);_mm256_store_ps(o+56,a7);
   }
  }
}
int main(int argc,char**argv){
  int K=atoi(argv[1]), per=atoi(argv[2]), rows=1536;
  float* pan=aligned_alloc(64,K*64*4); for(int i=0;i<K*64;i++)pan[i]=1e-3f*(i%7);
  float* tile=aligned_alloc(64,128*64*4);
  int n=rows*per; uint16_t* col=malloc(n*2); float* val=malloc(n*4); int* rp=malloc((rows+1)*4);
  for(int r=0;r<=rows;r++)rp[r]=r*per;
  for(int i=0;i<n;i++){col[i]=rand()%K; val[i]=1e-3f;}
  int reps=200; double t=now(); run(pan,col,val,rp,rows,tile,reps); t=now()-t;
  double ops=(double)n*reps; printf("K=%d per=%d: %.2f ns per nnz-op, %.2f FMA/cycle@2.5GHz (%f)\n",K,per, t/ops*1e9, 8/(t/ops*2.5e9), tile[5]);
}

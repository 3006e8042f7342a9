/*
 * secure_delete.c - the figures for sqlite.secure_delete in docs/operations.md:
 * N messages of SIZE bytes published in batches of BATCH through the
 * loopback transport (so a test build: ACKBOX_TEST_TRANSPORTS=ON), waited
 * for until acked; prints the rate of the whole run and of the drain.
 * OUTAGE=1 stores everything with the broker down first (a backlog that is
 * then drained); SYNC=full|normal|off sets store.sync; SCAN=1 counts the
 * payloads still readable in the store and its WAL before the close.
 *
 *   cc -O2 -Iinclude -Ibrokers/loopback docs/bench/secure_delete.c -Lbuild -lackbox \
 *      -Wl,-rpath,$PWD/build -o /tmp/sd
 *   OUTAGE=1 /tmp/sd /tmp/outbox.db on 50000 1024 100
 */
#include <ackbox/ackbox.h>
#include "ackbox_loopback.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
static double now(void){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec/1e9;}
/* usage: secure_delete DB MODE N SIZE BATCH */
int main(int argc,char**argv){
  if(argc!=6){fprintf(stderr,"usage: secure_delete DB off|fast|on N SIZE BATCH\n");return 2;}
  const char*db=argv[1],*mode=argv[2]; int n=atoi(argv[3]),size=atoi(argv[4]),batch=atoi(argv[5]);
  char url[512],err[512]; snprintf(url,sizeof url,"sqlite://%s",db);
  ackbox_conf*c=ackbox_conf_new();
  ackbox_conf_set(c,"store.url",url,err,sizeof err);
  ackbox_conf_set(c,"transport.url","loopback://m",err,sizeof err);
  ackbox_conf_set(c,"sqlite.secure_delete",mode,err,sizeof err);
  if(getenv("SYNC")) ackbox_conf_set(c,"store.sync",getenv("SYNC"),err,sizeof err);
  ackbox_conf_set(c,"log.level","error",err,sizeof err);
  ackbox_conf_set(c,"retry.backoff.initial","10ms",err,sizeof err); ackbox_conf_set(c,"retry.backoff.max","20ms",err,sizeof err);
  ackbox*ab; if(ackbox_new(&ab,c,err,sizeof err)){fprintf(stderr,"%s\n",err);return 1;}
  char*buf=malloc(size+1); ackbox_msg*ms=calloc(batch,sizeof*ms); char**ps=calloc(batch,sizeof*ps);
  for(int i=0;i<batch;i++) ps[i]=malloc(size+1);
  int outage=getenv("OUTAGE")!=NULL; if(outage) ackbox_loopback_set_up(ackbox_loopback_get("m"),0);
  double t0=now();
  for(int i=0;i<n;){
    int k=0; for(;k<batch&&i<n;k++,i++){ snprintf(ps[k],size+1,"SECRET-%07d-",i); memset(ps[k]+15,'x',size-15); ms[k].topic="t"; ms[k].payload=ps[k]; ms[k].payload_len=size;}
    if(ackbox_publish_batch(ab,ms,k,NULL,err,sizeof err)){fprintf(stderr,"%s\n",err);return 1;}
  }
  double td=now();
  if(outage) ackbox_loopback_set_up(ackbox_loopback_get("m"),1);
  if(ackbox_flush(ab,600000)){fprintf(stderr,"flush\n");return 1;}
  double t1=now();
  if(getenv("SCAN")){ char cmd[1024]; snprintf(cmd,sizeof cmd,"echo open: db $(grep -a -o 'SECRET-[0-9]*' %s | sort -u | wc -l) wal $(grep -a -o 'SECRET-[0-9]*' %s-wal | sort -u | wc -l); ls -la %s*",db,db,db); system(cmd);}
  ackbox_destroy(ab);
  printf("mode=%s n=%d size=%d batch=%d elapsed=%.3f rate=%.0f drain=%.3f drain_rate=%.0f\n",mode,n,size,batch,t1-t0,n/(t1-t0),t1-td,n/(t1-td));
  free(buf); return 0;
}
